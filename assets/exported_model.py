"""The task model compressed for serving: ONNX FP32 and INT8, behind parity, quantisation and latency gates.

Parity and latency block. INT8 blocks only when ``require_int8`` is set; otherwise a failed INT8 gate is a
warning and FP32 (which passed parity) serves.
"""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from assets.stage_records import bundle_metadata, content_version, raise_if_gates_failed, tracking_metadata
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.checkpoints import BundleManifest, capture_provenance, seal_bundle, verify_bundle
from tl_platform.data.splits import DatasetSplits, read_splits
from tl_platform.experiments.promotion import candidate_tags
from tl_platform.export.exported_bundle import ExportConfig, ExportResult, export_task_bundle
from tl_platform.tracking.mlflow_tracker import MlflowRunTracker, RegisteredVersion

SERVING_MODEL_NAME = "tlp-classifier"
PARITY_CHECK = "onnx_fp32_parity"
QUANTISATION_CHECK = "int8_agreement_and_accuracy"
LATENCY_CHECK = "single_request_latency_p99"
BATCH_CHECK = "batch_independent_answers"
PRECISION_TAG = "tlp.precision"  # the precision the bundle serves in by default: int8 or fp32
INT8_GATE_TAG = "tlp.int8_gate"


def export_gate_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The four export gates, for every asset that exports a model for serving.

    All four are blocking specs, but the INT8 check fails with severity WARN (which blocks nothing) when the
    export falls back to FP32; it fails with ERROR only when ``require_int8`` is set.
    """
    return [
        dg.AssetCheckSpec(PARITY_CHECK, asset=asset, blocking=True,
                          description="ONNX FP32 logits match PyTorch within the tolerance on the eval suite"),
        dg.AssetCheckSpec(QUANTISATION_CHECK, asset=asset, blocking=True,
                          description="INT8 agrees with FP32 and loses little accuracy (chosen on validation, judged on "
                                      "test); a WARN failure means FP32 serves instead"),
        dg.AssetCheckSpec(LATENCY_CHECK, asset=asset, blocking=True,
                          description="p99 of single-request inference of the serving graph stays within the budget"),
        dg.AssetCheckSpec(BATCH_CHECK, asset=asset, blocking=True,
                          description="the serving graph gives each eval text the same answer alone as inside shuffled "
                                      "batches of other texts (an A/B test or an audit needs that)"),
    ]


class ExportedModelConfig(dg.Config):
    """The fields of ``ExportConfig`` (validated there): what the gates demand."""

    opset: int = 18
    parity_tolerance: float = Field(default=1e-3, description="largest |logit difference| ONNX FP32 vs PyTorch")
    min_int8_agreement: float = Field(default=0.99, description="share of predictions (one text at a time) INT8 must share with FP32, on validation and on test")
    max_int8_accuracy_drop_points: float = Field(default=0.5, description="accuracy INT8 may lose, in points")
    require_int8: bool = Field(
        default=False,
        description="fail the export when INT8 fails its gate; by default FP32 (which passed parity) serves instead",
    )
    latency_budget_p99_ms: float = Field(default=50.0, description="p99 single-request latency budget of the serving graph")
    latency_threads: int = 1
    latency_requests: int = 200
    projection_components: int = 4
    batch_independence_tolerance: float = Field(
        default=1e-4, description="largest class-probability change allowed between a text alone and in a batch")

    def to_library(self) -> ExportConfig:
        return ExportConfig(**self.model_dump())


@dg.asset(
    group_name="serving",
    kinds={"onnx", "mlflow"},
    deps=["task_model", "labelled_data"],
    code_version="5",  # 5: tokenises with the task bundle's truncation (head or head_tail)
    pool="training",  # its latency gate needs the cores to itself, as training does
    check_specs=export_gate_specs("exported_model"),
)
def exported_model(
    context: dg.AssetExecutionContext,
    config: ExportedModelConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The task model as ONNX graphs (FP32, and INT8 with a scale per token, so a text's answer never depends on
    its batch companions) for serving.

    Carries the training tokenizer byte for byte and the embedding projection monitoring uses. Unless ONNX
    matches PyTorch and single requests meet the latency budget, the step fails and nothing is materialised.
    INT8 serves when it matches FP32 on the validation split (the choice) and the test split (the judgement);
    otherwise the bundle serves FP32, the INT8 check warns with the reason, and the bundle, its registry tag
    ``tlp.precision`` and this asset's metadata say so (``require_int8`` makes the INT8 gate blocking). A passing export registers a version of the serving model tagged ``candidate``; it moves
    no alias: only promotion (the A/B decision, the first deployment, or `tlp promote`) does.
    """
    settings = config.to_library()
    upstreams = [stage_store.upstream(context, key) for key in ("task_model", "labelled_data")]
    task = verify_bundle(upstreams[0].path / "bundle", expected_stage="task")
    splits = read_splits(upstreams[1].path)
    output = stage_store.output_dir(context)
    with mlflow.run_for_asset(context) as tracker:
        export = export_and_register(context, tracker, task, splits, settings, output / "bundle", extra_tags={})
        stored = stage_store.save(context, output)
    return dg.MaterializeResult(
        metadata={**export.metadata, **stored, **lineage_metadata(*upstreams)},
        check_results=export.checks,
        data_version=export.data_version,
    )


@dataclass(frozen=True)
class RegisteredExport:
    """An export that passed its gates and was registered as a candidate, with what the asset reports of it."""

    version: RegisteredVersion
    manifest: BundleManifest
    checks: list[dg.AssetCheckResult]
    metadata: dict[str, Any]
    data_version: dg.DataVersion


def export_and_register(
    context: dg.AssetExecutionContext,
    tracker: MlflowRunTracker,
    task: BundleManifest,
    splits: DatasetSplits,
    settings: ExportConfig,
    directory: Path,
    extra_tags: Mapping[str, str],
) -> RegisteredExport:
    """Export a task bundle, judge it by the gates (raising if one fails), seal it, register it as a candidate.

    The one path every served model takes, the first export and every retrained candidate alike.
    """
    tracker.log_params({f"export.{k}": v for k, v in settings.to_json().items()})
    tracker.log_params({"parent_bundle": task.bundle_sha256})
    result = export_task_bundle(task.path, directory, splits, settings)
    tracker.log_metrics(result.summary())
    provenance = capture_provenance(
        stage="exported", config=settings.to_json(), seeds={}, data_hashes=splits.hashes(),
        parent_bundle=task.bundle_sha256, extra={"max_length": result.max_length, "truncation": result.truncation},
    )
    manifest = seal_bundle(directory, provenance)
    results = gate_results(result)
    # a WARN failure (INT8 fell back to FP32) is reported with the materialisation; only ERROR failures block
    blocked = any(not r.passed and r.severity == dg.AssetCheckSeverity.ERROR for r in results)
    checks = raise_if_gates_failed(context, results) if blocked else results
    choice = result.precision
    if not choice.int8_passed:
        context.log.warning(f"{context.asset_key.to_user_string()}: {choice.reason}")
    int8_gate = "passed" if choice.int8_passed else "failed, not blocking"
    tags = {"bundle_path": str(manifest.path), "bundle_sha256": manifest.bundle_sha256,
            "dagster.run_id": context.run_id, PRECISION_TAG: choice.precision, INT8_GATE_TAG: int8_gate,
            **candidate_tags(), **extra_tags}
    version = tracker.log_bundle(manifest.path, "bundle", SERVING_MODEL_NAME, tags)
    tracker.set_tags({"registered_version": version.version, "status": "candidate",
                      "serving_precision": choice.precision, "precision_reason": choice.reason[:5000]})
    metadata = {
        **tracking_metadata(tracker, version),
        **bundle_metadata(manifest),
        **{k: float(v) for k, v in result.summary().items()},
        "registered_version": version.version,
        "status": "candidate",
        "serving_precision": choice.precision,
        "max_length": result.max_length,
        "truncation": result.truncation,
        "int8_gate": int8_gate,
        "precision_reason": choice.reason,
        "gates": dg.MetadataValue.json(json.loads(json.dumps(result.gate_reports()))),
    }
    # serving.json names the task bundle's manifest (which records when it was made): the task's content
    # version stands in for it, so re-exporting the same weights gives the same data version
    data_version = content_version(manifest.content_sha256(frozenset({"serving.json"})), task.content_sha256())
    return RegisteredExport(version, manifest, checks, metadata, data_version)


def gate_results(result: ExportResult) -> list[dg.AssetCheckResult]:
    """The three export gates as check results, with the figures each was judged on."""
    choice, test, validation = result.precision, result.quantisation, result.quantisation_validation
    served = result.served_batch_independence
    if choice.int8_passed:
        int8_description = ("INT8 serves: chosen on validation, judged on test, one text at a time; the same "
                            "answers in any batch")
    elif choice.blocking:
        int8_description = choice.reason
    else:
        int8_description = f"failed, not blocking: {choice.reason}"
    return [
        dg.AssetCheckResult(
            check_name=PARITY_CHECK, passed=result.parity.passed,
            metadata={"max_abs_logit_diff": result.parity.max_abs_logit_diff,
                      "tolerance": result.parity.tolerance, "examples": result.parity.examples},
        ),
        dg.AssetCheckResult(
            check_name=QUANTISATION_CHECK, passed=choice.int8_passed,
            # WARN: the export serves FP32 instead, nothing downstream needs to stop; ERROR when INT8 is required
            severity=dg.AssetCheckSeverity.ERROR if choice.int8_passed or choice.blocking else dg.AssetCheckSeverity.WARN,
            metadata={"serving_precision": choice.precision,
                      "blocking": choice.blocking,
                      "reason": choice.reason,
                      "label_agreement": test.label_agreement,
                      "fp32_accuracy": test.fp32_accuracy,
                      "int8_accuracy": test.int8_accuracy,
                      "accuracy_drop_points": test.accuracy_drop_points,
                      "min_agreement": test.min_agreement,
                      "max_accuracy_drop_points": test.max_accuracy_drop_points,
                      "validation_label_agreement": validation.label_agreement,
                      "validation_accuracy_drop_points": validation.accuracy_drop_points,
                      "validation_examples": validation.examples,
                      "batched_label_agreement": result.quantisation_batched.label_agreement,
                      "batched_accuracy_drop_points": result.quantisation_batched.accuracy_drop_points,
                      "int8_only_correct": test.int8_only_correct,
                      "fp32_only_correct": test.fp32_only_correct,
                      "mcnemar_p": test.mcnemar_p,
                      "batch_changed_labels": result.batch_independence.changed_labels,
                      "batch_max_abs_prob_diff": result.batch_independence.max_abs_prob_diff,
                      "examples": test.examples},
            description=int8_description,
        ),
        dg.AssetCheckResult(
            check_name=LATENCY_CHECK, passed=result.latency.passed,
            metadata={"p50_ms": result.latency.p50_ms, "p99_ms": result.latency.p99_ms,
                      "budget_p99_ms": result.latency.budget_p99_ms, "requests": result.latency.requests,
                      "threads": result.latency.threads, "precision": result.latency.precision},
        ),
        dg.AssetCheckResult(
            check_name=BATCH_CHECK, passed=served.passed, description=served.shortfall() or (
                f"{served.precision.upper()} serves the same answer alone and in batches of "
                f"{'/'.join(map(str, served.batch_sizes))}"),
            metadata={"precision": served.precision, "changed_labels": served.changed_labels,
                      "changed_texts": served.changed_texts, "max_abs_prob_diff": served.max_abs_prob_diff,
                      "tolerance": served.tolerance, "batch_sizes": list(served.batch_sizes),
                      "examples": served.examples},
        ),
    ]
