"""The task classifier: LoRA or full fine-tuning of the (domain-adapted) encoder on the labelled training split."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
import shutil
from dataclasses import asdict

import dagster as dg
from pydantic import Field

from assets.stage_records import (
    bundle_metadata,
    content_version,
    log_split_inputs,
    png_markdown,
    raise_if_gates_failed,
    register_bundle,
    tracking_metadata,
)
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.checkpoints import capture_provenance, verify_bundle, write_bundle
from tl_platform.data.splits import jsonl_bytes, read_splits
from tl_platform.evaluation.plots import plot_confusion_matrix
from tl_platform.models.foundation import load_tokenizer
from tl_platform.training.classifier import FineTuneResult, fine_tune_classifier
from tl_platform.training.config import FineTuneConfig
from tl_platform.training.long_text import MIN_HEAD_TAIL_LENGTH, count_tokens

ACCURACY_CHECK = "eval_suite_accuracy"


class TaskModelConfig(dg.Config):
    """The fields of ``FineTuneConfig`` (validated there) and the accuracy the eval-suite check demands."""

    method: str = Field(default="lora", description="lora (adapters plus head) or full (every weight)")
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float | None = Field(default=None, description="head rate; 1e-3 for LoRA, 1e-4 full when unset")
    layer_lr_decay: float = 0.9
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    early_stopping_patience: int = 2
    max_length: int = 64
    truncation: str = Field(
        default="head",
        description="texts longer than max_length: head keeps their first tokens; head_tail a quarter from the start "
        "and the rest from the end (max_length >= 32). Recorded in the bundle: export and serving cut the same way",
    )
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = Field(
        default=["query", "key", "value", "dense"], description="names of the linear modules that get adapters"
    )
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 42
    min_test_accuracy: float = Field(default=0.85, description="the check fails below this accuracy on the test split")

    def to_library(self) -> FineTuneConfig:
        fields = self.model_dump(exclude={"min_test_accuracy"})
        return FineTuneConfig(**{**fields, "lora_target_modules": tuple(self.lora_target_modules)})


@dg.asset(
    group_name="transfer",
    kinds={"pytorch", "mlflow"},
    deps=["domain_adapted_model", "foundation_model", "labelled_data"],
    code_version="3",  # 3: truncation (head or head_tail), recorded in the bundle
    pool="training",
    check_specs=[
        dg.AssetCheckSpec(
            ACCURACY_CHECK,
            asset="task_model",
            blocking=True,
            description="accuracy on the frozen test split must reach the configured floor",
        )
    ],
)
def task_model(
    context: dg.AssetExecutionContext,
    config: TaskModelConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The classifier that will be exported and served, fine-tuned with LoRA or fully, as configured.

    Layer-wise learning-rate decay by depth, AdamW, linear warm-up, early stopping on validation loss with the
    best checkpoint restored. Scored on the eval suite frozen by the foundation stage: accuracy, macro-F1,
    per-class scores, calibration (ECE) and a confusion matrix. The bundle carries everything needed to
    reload and repeat it. Below the accuracy floor the step fails and nothing is materialised; the failure says
    by how much, on which split, and what to try next.
    """
    settings = config.to_library()
    upstreams = [stage_store.upstream(context, key) for key in ("domain_adapted_model", "foundation_model", "labelled_data")]
    parent = verify_bundle(upstreams[0].path / "bundle")
    foundation = verify_bundle(upstreams[1].path / "bundle", expected_stage="foundation")
    splits = read_splits(upstreams[2].path)
    eval_set = (foundation.path / "eval_suite" / "test.jsonl").read_bytes()
    if eval_set != jsonl_bytes(splits.test):
        raise ValueError("the test split differs from the eval suite frozen in the foundation bundle; re-materialise foundation_model")
    tokenizer = load_tokenizer(str(parent.path / "tokenizer"))
    directory = stage_store.output_dir(context)

    with mlflow.run_for_asset(context) as tracker:
        tracker.log_params({f"fine_tune.{k}": v for k, v in settings.to_json().items()})
        tracker.log_params({"parent_bundle": parent.bundle_sha256, "parent_stage": parent.stage})
        log_split_inputs(tracker, splits)
        result = fine_tune_classifier(parent.path / "model", tokenizer, splits, settings, directory / "work", tracker)
        report = result.test_report
        tracker.log_metrics(result.summary())
        picture = plot_confusion_matrix(report, directory / "confusion_matrix.png", title="task_model on test split")
        probe = json.loads((foundation.path / "reports" / "linear_probe.json").read_text())
        test_lengths = count_tokens(tokenizer, splits.test.texts)
        truncated = sum(n > settings.max_length for n in test_lengths) / max(1, len(test_lengths))
        accuracy_check = dg.AssetCheckResult(
            check_name=ACCURACY_CHECK,
            passed=report.accuracy >= config.min_test_accuracy,
            metadata={"test_accuracy": report.accuracy, "min_test_accuracy": config.min_test_accuracy, "n": report.n,
                      "split": "test", "test_texts_truncated_share": truncated},
            description=f"test accuracy {report.accuracy:.4f} against a floor of {config.min_test_accuracy:.2f}",
        )
        try:
            checks = raise_if_gates_failed(context, [accuracy_check])
        except dg.Failure as failure:
            raise dg.Failure(
                description=below_floor_message(report.accuracy, report.n, config.min_test_accuracy, settings,
                                                result, parent.stage, truncated),
                metadata={**failure.metadata, "test_accuracy": report.accuracy,
                          "min_test_accuracy": config.min_test_accuracy, "test_texts": report.n,
                          "test_texts_truncated_share": truncated},
                allow_retries=False,
            ) from None
        provenance = capture_provenance(
            stage="task",
            config=settings.to_json(),
            seeds={"training": settings.seed, "split": splits.seed},
            data_hashes=splits.hashes(),
            parent_bundle=parent.bundle_sha256,
            extra={"parent_stage": parent.stage, "best_epoch": result.best_epoch},
        )
        history = [asdict(epoch) for epoch in result.epochs]
        manifest = write_bundle(
            directory / "bundle",
            model=result.model,
            tokenizer=tokenizer,
            provenance=provenance,
            label_schema=splits.train.schema,
            adapter_dir=result.adapter_dir,
            extra_files={
                "eval_set.jsonl": eval_set,
                "reports/test_report.json": json.dumps(report.to_json(), indent=2).encode(),
                "reports/history.json": json.dumps(history, indent=2).encode(),
                "reports/confusion_matrix.png": picture.read_bytes(),
            },
        )
        shutil.rmtree(directory / "work", ignore_errors=True)  # trainer checkpoints: the bundle holds the result
        version = register_bundle(tracker, manifest, context)
        tracked = tracking_metadata(tracker, version)
        stored = stage_store.save(context, directory)
    per_class = {name: asdict(scores) for name, scores in report.per_class.items()}
    return dg.MaterializeResult(
        metadata={
            **tracked,
            **stored,
            **lineage_metadata(*upstreams),
            **bundle_metadata(manifest),
            "method": settings.method,
            "test_accuracy": report.accuracy,
            "test_macro_f1": report.macro_f1,
            "test_ece": report.ece,
            "linear_probe_test_accuracy": float(probe["accuracy"]),
            "per_class": dg.MetadataValue.json(per_class),
            "confusion_matrix": png_markdown(picture, "confusion matrix"),
            "epochs_run": len(result.epochs),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "max_length": settings.max_length,
            "truncation": settings.truncation,
            "test_texts_truncated_share": truncated,
            "history": dg.MetadataValue.json(history),
            "train_samples_per_second": result.train_samples_per_second,
            "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters,
            "learning_rates_by_depth": dg.MetadataValue.json(
                {g.depth: g.learning_rate for g in result.parameter_groups}
            ),
        },
        check_results=checks,
        data_version=content_version(manifest.content_sha256()),
    )


def below_floor_message(
    accuracy: float,
    n: int,
    floor: float,
    settings: FineTuneConfig,
    result: FineTuneResult,
    parent_stage: str,
    truncated_share: float,
) -> str:
    """One paragraph for a run that missed the accuracy floor: the figure, the floor, the split and its size, and
    what to try, each suggestion only where it applies to this run."""
    method = "LoRA" if settings.method == "lora" else "full fine-tuning"
    adapted = "a domain-adapted encoder" if parent_stage == "domain_adapted" else "the foundation model (no domain adaptation)"
    tries = []
    if result.stopped_early:
        tries.append(
            f"a different learning rate (now {settings.base_learning_rate:g}): validation loss stopped improving at "
            f"epoch {result.best_epoch}, so more epochs alone will not help"
        )
    else:
        tries.append(f"more epochs (task_model epochs; all {settings.epochs} ran without early stopping)")
    if settings.method == "lora":
        tries.append("full fine-tuning (task_model method: full)")
    if parent_stage == "domain_adapted":
        tries.append("more in-domain text for domain adaptation (domain_adapted_model corpus_path)")
    else:
        tries.append("domain adaptation first (domain_adapted_model enabled: true)")
    if truncated_share > 0 and settings.truncation == "head":
        tries.append(
            f"a longer max_length ({truncated_share:.1%} of the test texts are longer than {settings.max_length} "
            "tokens and lose their end; tlp plan measures the lengths and chooses one), or truncation head_tail "
            f"(keeps their end; max_length >= {MIN_HEAD_TAIL_LENGTH})"
        )
    elif truncated_share > 0:
        tries.append(
            f"a longer max_length ({truncated_share:.1%} of the test texts are longer than {settings.max_length} "
            "tokens and lose their middle to head+tail truncation; tlp plan measures the lengths and chooses one)"
        )
    correct = round(accuracy * n)
    return (
        f"task_model missed its accuracy floor: {accuracy:.4f} ({correct} of {n} correct) on the frozen test split "
        f"of {n} texts, against min_test_accuracy {floor:g}. It was trained with {method} for "
        f"{len(result.epochs)} epoch(s) at max_length {settings.max_length}, from {adapted}. To try: "
        f"{'; '.join(tries)}; or check the labels, and whether the floor suits this task. Nothing was "
        "materialised: downstream keeps reading the last version that passed."
    )
