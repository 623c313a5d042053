"""From a task bundle to an exported bundle: ONNX FP32 and INT8 graphs, the training tokenizer byte for byte,
the monitoring projection, and the gate reports that decide whether it may be deployed."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_platform.checkpoints.bundle import load_bundle
from tl_platform.data.schema import LabelSchema
from tl_platform.data.splits import DatasetSplits, jsonl_bytes, read_split_jsonl
from tl_platform.export.gates import (
    BATCH_INDEPENDENCE_TOLERANCE,
    BatchIndependenceReport,
    LatencyReport,
    ParityReport,
    QuantisationReport,
    RunBatch,
    batched_outputs,
    check_batch_independence,
    check_parity,
    check_quantisation,
    encoded_for_torch,
    measure_latency,
)
from tl_platform.export.monitoring_reference import write_reference
from tl_platform.export.onnx_export import DEFAULT_OPSET, export_onnx, logits_and_embedding, quantize_int8
from tl_platform.export.precision import PrecisionChoice, choose_precision
from tl_platform.export.runtime import Encoded, OnnxClassifier, encode
from tl_platform.monitoring.features import DEFAULT_COMPONENTS, EmbeddingProjection
from tl_platform.training.long_text import TruncationStrategy, recorded_truncation
from tl_platform.validation import require as _require

FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
EVAL_SUITE_FILE = "eval_suite.jsonl"
# the prediction log stores the projection in this many typed columns (serving.log_schema.PROJECTION_COLUMNS)
MAX_PROJECTION_COMPONENTS = 8


@dataclass(frozen=True)
class ExportConfig:
    """Export and gate settings.

    Attributes:
        opset: ONNX opset of the exported graph.
        parity_tolerance: largest allowed |logit difference| between ONNX FP32 and PyTorch on the eval suite.
        min_int8_agreement: share of predictions, one text at a time, on which INT8 must agree with FP32, on the
            validation split (where INT8 is chosen) and on the test split (where it is judged).
        max_int8_accuracy_drop_points: accuracy INT8 may lose against FP32 there, in percentage points.
        require_int8: False (default): an INT8 graph that fails its gate leaves the export serving FP32 (which
            passed parity), reported as a non-blocking failure. True: a failed INT8 gate fails the export, for
            deployments that cannot afford FP32's latency or memory.
        batch_independence_tolerance: largest change of any class probability allowed between a text scored
            alone and inside shuffled batches of other texts (8 and 32, so its padding differs), in (0, 1); a
            changed label always fails. INT8 must pass to serve; FP32's figure is reported beside it.
        latency_budget_p99_ms: p99 of single-request inference of the graph that serves (tokenisation included)
            must stay below this.
        latency_threads: ONNX Runtime intra-op threads used for the latency measurement and by default in serving.
        latency_requests: timed single requests.
        projection_components: dimensions of the monitored embedding projection, in [1, 8] (the prediction log
            stores each in a typed column).
    """

    opset: int = DEFAULT_OPSET
    parity_tolerance: float = 1e-3
    min_int8_agreement: float = 0.99
    max_int8_accuracy_drop_points: float = 0.5
    require_int8: bool = False
    batch_independence_tolerance: float = BATCH_INDEPENDENCE_TOLERANCE
    latency_budget_p99_ms: float = 50.0
    latency_threads: int = 1
    latency_requests: int = 200
    projection_components: int = DEFAULT_COMPONENTS

    def __post_init__(self) -> None:
        _require(14 <= self.opset <= 23, f"ExportConfig.opset must be in [14, 23], got {self.opset}")
        _require(self.parity_tolerance > 0, f"ExportConfig.parity_tolerance must be positive, got {self.parity_tolerance}")
        _require(
            0 < self.min_int8_agreement <= 1,
            f"ExportConfig.min_int8_agreement must be in (0, 1], got {self.min_int8_agreement}",
        )
        _require(
            self.max_int8_accuracy_drop_points >= 0,
            f"ExportConfig.max_int8_accuracy_drop_points must be at least 0, got {self.max_int8_accuracy_drop_points}",
        )
        _require(
            0 < self.batch_independence_tolerance < 1,
            f"ExportConfig.batch_independence_tolerance must be in (0, 1), got {self.batch_independence_tolerance}",
        )
        _require(
            self.latency_budget_p99_ms > 0,
            f"ExportConfig.latency_budget_p99_ms must be positive, got {self.latency_budget_p99_ms}",
        )
        _require(1 <= self.latency_threads <= 64, f"ExportConfig.latency_threads must be in [1, 64], got {self.latency_threads}")
        _require(
            10 <= self.latency_requests <= 100_000,
            f"ExportConfig.latency_requests must be in [10, 100000], got {self.latency_requests}",
        )
        _require(
            1 <= self.projection_components <= MAX_PROJECTION_COMPONENTS,
            f"ExportConfig.projection_components must be in [1, {MAX_PROJECTION_COMPONENTS}] (the prediction log's "
            f"typed projection columns), got {self.projection_components}",
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    parity: ParityReport
    quantisation: QuantisationReport  # one text at a time, test split: where INT8 is judged
    quantisation_validation: QuantisationReport  # one text at a time, validation split: where INT8 is chosen
    quantisation_batched: QuantisationReport  # eval suite in length-ordered batches of 32: reported, not gating
    batch_independence: BatchIndependenceReport  # INT8 alone against shuffled batches, eval suite: gates INT8
    batch_independence_fp32: BatchIndependenceReport  # the same of FP32: reported
    precision: PrecisionChoice
    latency: LatencyReport  # of the graph that serves
    fp32_bytes: int
    int8_bytes: int
    max_length: int
    truncation: TruncationStrategy = "head"  # the task bundle's, which every gate and serving.json use

    def gate_reports(self) -> dict[str, dict[str, object]]:
        """Every gate's numbers, as gates.json holds them and the asset's metadata shows them."""
        return {
            "parity": self.parity.to_json(),
            "quantisation": self.quantisation.to_json(),
            "quantisation_validation": self.quantisation_validation.to_json(),
            "precision": self.precision.to_json(),
            "quantisation_batched": self.quantisation_batched.to_json(),
            "batch_independence": self.batch_independence.to_json(),
            "batch_independence_fp32": self.batch_independence_fp32.to_json(),
            "latency": self.latency.to_json(),
        }

    @property
    def served_batch_independence(self) -> BatchIndependenceReport:
        """The batch-independence report of the graph that serves."""
        return self.batch_independence if self.precision.precision == "int8" else self.batch_independence_fp32

    def summary(self) -> dict[str, float]:
        return {
            "parity_max_abs_logit_diff": self.parity.max_abs_logit_diff,
            "int8_label_agreement": self.quantisation.label_agreement,
            "fp32_accuracy": self.quantisation.fp32_accuracy,
            "int8_accuracy": self.quantisation.int8_accuracy,
            "int8_accuracy_drop_points": self.quantisation.accuracy_drop_points,
            "int8_mcnemar_p": self.quantisation.mcnemar_p,
            "int8_validation_label_agreement": self.quantisation_validation.label_agreement,
            "int8_validation_accuracy_drop_points": self.quantisation_validation.accuracy_drop_points,
            "int8_serves": 1.0 if self.precision.precision == "int8" else 0.0,
            "int8_batched_label_agreement": self.quantisation_batched.label_agreement,
            "int8_batched_accuracy_drop_points": self.quantisation_batched.accuracy_drop_points,
            "int8_batched_mcnemar_p": self.quantisation_batched.mcnemar_p,
            "int8_batch_changed_labels": float(self.batch_independence.changed_labels),
            "int8_batch_changed_texts": float(self.batch_independence.changed_texts),
            "int8_batch_max_abs_prob_diff": self.batch_independence.max_abs_prob_diff,
            "fp32_batch_max_abs_prob_diff": self.batch_independence_fp32.max_abs_prob_diff,
            "eval_suite_examples": self.quantisation.examples + self.quantisation_validation.examples,
            "latency_p50_ms": self.latency.p50_ms,
            "latency_p99_ms": self.latency.p99_ms,
            "fp32_megabytes": self.fp32_bytes / 1e6,
            "int8_megabytes": self.int8_bytes / 1e6,
        }


def export_task_bundle(task_bundle: Path, directory: Path, splits: DatasetSplits, config: ExportConfig) -> ExportResult:
    """Fill ``directory`` (to be sealed by the caller) with the exported model and the reports of its gates.

    Every gate tokenises as training did: ``max_length`` and ``truncation`` come from the task bundle's provenance
    config, and ``serving.json`` passes both on to serving.
    INT8 is chosen on the validation split and judged on the test split (which must hold the rows the task
    bundle was scored on), and must answer every eval text alike alone and inside shuffled batches; when it
    fails any of these, FP32 serves (or, with ``require_int8``, the caller fails the export). Parity, batch
    independence and the batched INT8 figures use the whole eval suite (validation, then test). At 198 test
    sentences one text is half a point, the size of the accuracy budget itself: a split's gate is coarse.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    model, tokenizer, manifest = load_bundle(task_bundle, AutoModelForSequenceClassification, expected_stage="task")
    model.eval()
    max_length = int(manifest.provenance["config"]["max_length"])
    truncation = recorded_truncation(manifest.provenance["config"], task_bundle)
    schema = LabelSchema.from_json(json.loads((task_bundle / "label_schema.json").read_text()))
    scored_on = read_split_jsonl(task_bundle / "eval_set.jsonl", schema)
    eval_suite, train_texts = splits.eval_suite(), list(splits.train.texts)
    if eval_suite.schema.labels != schema.labels:
        raise ValueError(f"eval suite labels {eval_suite.schema.labels} differ from the task model's {schema.labels}")
    missing = set(zip(scored_on.texts, scored_on.labels, strict=True)) - set(
        zip(splits.test.texts, splits.test.labels, strict=True)
    )
    if missing:
        raise ValueError(
            f"the test split lacks {len(missing)} of the {len(scored_on)} rows the task model was scored on "
            f"({task_bundle / 'eval_set.jsonl'}); export from the labelled data the task model was trained on"
        )

    directory.mkdir(parents=True, exist_ok=True)
    fp32_path = export_onnx(model, tokenizer, directory / FP32_FILE, config.opset)
    int8_path = quantize_int8(fp32_path, directory / INT8_FILE)
    # The exact tokenizer artefacts of training, byte for byte: serving must tokenise as training did.
    shutil.copytree(task_bundle / "tokenizer", directory / "tokenizer")
    shutil.copy2(task_bundle / "label_schema.json", directory / "label_schema.json")
    (directory / EVAL_SUITE_FILE).write_bytes(jsonl_bytes(eval_suite))  # what the gates judged, to judge again

    fp32 = OnnxClassifier(fp32_path, intra_op_threads=config.latency_threads)
    int8 = OnnxClassifier(int8_path, intra_op_threads=config.latency_threads)
    texts = list(eval_suite.texts)
    reference, _ = batched_outputs(torch_runner(model), tokenizer, texts, max_length, truncation=truncation)
    fp32_logits, fp32_embeddings = batched_outputs(fp32.run, tokenizer, texts, max_length, truncation=truncation)
    parity = check_parity(reference, fp32_logits, config.parity_tolerance)
    # The agreement gate judges one text at a time, the answer a text gets on its own; the batch-independence
    # gate then requires that answer inside any batch (a graph quantised per batch tensor fails it).
    # Length-ordered batches of 32 against FP32 are measured and reported.
    fp32_single, _ = batched_outputs(fp32.run, tokenizer, texts, max_length, batch_size=1, truncation=truncation)
    int8_single, _ = batched_outputs(int8.run, tokenizer, texts, max_length, batch_size=1, truncation=truncation)
    labels = np.asarray(eval_suite.labels)
    # eval_suite() holds the validation rows first, then the test rows
    chosen_on, judged_on = slice(0, len(splits.validation)), slice(len(splits.validation), len(texts))

    def int8_gate(rows: slice) -> QuantisationReport:
        return check_quantisation(
            fp32_single[rows], int8_single[rows], labels[rows].tolist(), config.min_int8_agreement,
            config.max_int8_accuracy_drop_points,
        )

    quantisation_validation, quantisation = int8_gate(chosen_on), int8_gate(judged_on)
    independence = {
        name: check_batch_independence(
            graph.run, tokenizer, texts, max_length, name, config.batch_independence_tolerance, alone_logits=alone,
            truncation=truncation,
        )
        for name, graph, alone in (("int8", int8, int8_single), ("fp32", fp32, fp32_single))
    }
    choice = choose_precision(quantisation_validation, quantisation, config.require_int8, independence["int8"])
    int8_batched, int8_embeddings = batched_outputs(int8.run, tokenizer, texts, max_length, truncation=truncation)
    quantisation_batched = check_quantisation(
        fp32_logits, int8_batched, eval_suite.labels, config.min_int8_agreement, config.max_int8_accuracy_drop_points
    )
    served = int8 if choice.precision == "int8" else fp32
    with torch.inference_mode():
        latency = measure_latency(
            lambda text: served.run(encode(tokenizer, [text], max_length, truncation)),
            texts,
            budget_p99_ms=config.latency_budget_p99_ms,
            threads=config.latency_threads,
            requests=config.latency_requests,
            precision=choice.precision,
        )

    _, train_embeddings = batched_outputs(fp32.run, tokenizer, list(train_texts), max_length, truncation=truncation)
    projection = EmbeddingProjection.fit(train_embeddings, config.projection_components)
    (directory / "projection.json").write_text(json.dumps(projection.to_json()))
    # the served graph's answers on held-out text: what unshifted traffic should look like to monitoring
    served_logits, served_embeddings = (
        (int8_batched, int8_embeddings) if choice.precision == "int8" else (fp32_logits, fp32_embeddings)
    )
    write_reference(
        directory, tokenizer, train_texts, max_length, served_logits, served_embeddings, schema.labels, projection,
        truncation=truncation,
    )
    serving = {
        "max_length": max_length,
        "truncation": truncation,  # how training cut long texts; serving cuts them the same way
        "fp32": FP32_FILE,
        "int8": INT8_FILE,  # kept when INT8 failed: the evidence of the gate, and loadable by older servers
        "precision": choice.precision,  # what the deployment serves by default; int8 only where it passed
        "int8_gate": {"passed": choice.int8_passed, "reason": choice.reason},
        "labels": list(schema.labels),
        "label_names": list(schema.names),
        "task_bundle_sha256": manifest.bundle_sha256,
    }
    (directory / "serving.json").write_text(json.dumps(serving, indent=2))
    result = ExportResult(
        directory=directory,
        parity=parity,
        quantisation=quantisation,
        quantisation_validation=quantisation_validation,
        quantisation_batched=quantisation_batched,
        batch_independence=independence["int8"],
        batch_independence_fp32=independence["fp32"],
        precision=choice,
        latency=latency,
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=int8_path.stat().st_size,
        max_length=max_length,
        truncation=truncation,
    )
    (directory / "reports").mkdir(exist_ok=True)
    (directory / "reports" / "gates.json").write_text(json.dumps(result.gate_reports(), indent=2))
    return result


def torch_runner(model: Any) -> RunBatch:
    """PyTorch eager through the very module that was exported (logits and pooled embedding)."""
    import torch

    wrapped = logits_and_embedding(model)

    def run(encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, embedding = wrapped(**encoded_for_torch(encoded))
        return logits.numpy(), embedding.numpy()

    return run
