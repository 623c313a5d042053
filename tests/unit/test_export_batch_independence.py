"""The batch-independence gate: a text's answer alone must be its answer inside any batch, whatever the padding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.flipping_quantiser import BATCH_PUSH, batch_dependent_quantiser
from tests.tiny_bundles import amazon_splits, build_tiny_exported_bundle, build_tiny_task_bundle
from tl_platform.export.exported_bundle import ExportConfig
from tl_platform.export.gates import BatchIndependenceReport, batched_outputs, check_batch_independence, softmax
from tl_platform.export.onnx_export import export_onnx, quantize_int8, quantize_int8_dynamic
from tl_platform.export.precision import choose_precision, recorded_precision
from tl_platform.export.runtime import Encoded, OnnxClassifier

TEXTS = list(amazon_splits().eval_suite().texts)[:60]  # lengths from 4 to 40-odd tokens: batches pad differently


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def per_text(encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """Logits from each text's own tokens only (its padding excluded): batch-independent by construction."""
    real = encoded.input_ids * encoded.attention_mask
    mean_id = real.sum(axis=1) / encoded.attention_mask.sum(axis=1)
    logits = np.stack([np.zeros_like(mean_id), np.log(mean_id) - 4.0], axis=1)  # about half of TEXTS each side
    return logits, np.zeros((len(logits), 4))


def per_batch_scale(encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """As per_text, but rounded to a grid whose step is set by the largest token id of the whole batch tensor, as
    dynamic quantisation's scales are set by the whole tensor: a text's probabilities move with its companions."""
    logits, embedding = per_text(encoded)
    step = encoded.input_ids.max() / 50000.0
    return np.round(logits / step) * step, embedding


def per_batch_push(encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """As per_text, plus BATCH_PUSH per batch companion on the last class: labels change in batches."""
    logits, embedding = per_text(encoded)
    logits[:, -1] += BATCH_PUSH * (len(logits) - 1)
    return logits, embedding


def test_a_batch_independent_runner_passes(tokenizer: Any) -> None:
    report = check_batch_independence(per_text, tokenizer, TEXTS, 64, "int8")
    assert report == BatchIndependenceReport("int8", 60, (8, 32), 0, 0, report.max_abs_prob_diff, 1e-4)
    assert report.max_abs_prob_diff < 1e-12 and report.passed and report.shortfall() == ""
    assert report.to_json()["passed"] is True and report.to_json()["batch_sizes"] == [8, 32]


def test_probabilities_that_move_with_the_batch_fail_without_a_changed_label(tokenizer: Any) -> None:
    report = check_batch_independence(per_batch_scale, tokenizer, TEXTS, 64, "int8")
    assert report.changed_labels == 0 and report.changed_texts > 10 and report.max_abs_prob_diff > 1e-4
    assert not report.passed
    assert check_batch_independence(per_batch_scale, tokenizer, TEXTS, 64, "int8", tolerance=0.5).passed


def test_labels_that_change_in_batches_are_counted(tokenizer: Any) -> None:
    alone, _ = batched_outputs(per_text, tokenizer, TEXTS, 64, batch_size=1)
    report = check_batch_independence(per_batch_push, tokenizer, TEXTS, 64, "int8", alone_logits=alone)
    # pushed towards the last class in every batch of more than one text: each text labelled 0 alone flips
    flipped = int((alone.argmax(axis=1) == 0).sum())
    assert 0 < flipped < 60
    assert (report.changed_labels, report.changed_texts) == (flipped, 60)
    assert report.shortfall() == (
        f"INT8 answers depend on the batch: {flipped} of 60 texts changed label and 60 moved a probability by more "
        f"than 0.0001 (up to {report.max_abs_prob_diff:.2g}) in shuffled batches of 8/32"
    )


def test_guards(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="batch independence needs at least one text"):
        check_batch_independence(per_text, tokenizer, [], 64, "int8")
    with pytest.raises(ValueError, match="alone_logits has 2 rows for 60 texts"):
        check_batch_independence(per_text, tokenizer, TEXTS, 64, "int8", alone_logits=np.zeros((2, 2)))


def independence(changed_labels: int) -> BatchIndependenceReport:
    return BatchIndependenceReport("int8", 297, (8, 32), changed_labels, 40 if changed_labels else 0,
                                   0.3 if changed_labels else 0.0, 1e-4)


def test_int8_whose_answers_depend_on_the_batch_is_not_chosen() -> None:
    from tests.unit.test_export_precision import report

    chosen = choose_precision(report(0), report(0), False, independence(0))
    assert (chosen.precision, chosen.int8_passed) == ("int8", True)
    assert chosen.reason == (
        "INT8 serves: it passed its gate on validation (100 texts) and test (100), and answers 297 texts alike "
        "alone and in batches"
    )
    refused = choose_precision(report(0), report(0), False, independence(3))
    assert (refused.precision, refused.int8_passed, refused.blocking) == ("fp32", False, False)
    assert refused.reason == (
        "INT8 answers depend on the batch: 3 of 297 texts changed label and 40 moved a probability by more than "
        "0.0001 (up to 0.3) in shuffled batches of 8/32; FP32 serves (it passed parity with PyTorch)"
    )
    both = choose_precision(report(2), report(0), False, independence(3))
    assert both.reason.startswith("INT8 failed its gate on the validation split (label agreement 0.9800 < 0.99")
    assert "; INT8 answers depend on the batch: 3 of 297" in both.reason
    required = choose_precision(report(0), report(0), True, independence(3))
    assert (required.precision, required.blocking) == ("int8", True)
    assert required.reason.endswith("in shuffled batches of 8/32; require_int8 is set, so the export fails")


@pytest.fixture(scope="module")
def task_bundle(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_task_bundle(tiny_bert_dir, tmp_path_factory.mktemp("independence") / "task")


def test_the_shipped_int8_answers_alike_alone_and_batched_and_dynamic_int8_does_not(
    task_bundle: Path, tokenizer: Any, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    from tl_platform.checkpoints.bundle import load_bundle

    model, bundle_tokenizer, _ = load_bundle(task_bundle, AutoModelForSequenceClassification, expected_stage="task")
    fp32 = export_onnx(model.eval(), bundle_tokenizer, tmp_path / "fp32.onnx")
    texts = list(amazon_splits().eval_suite().texts)
    shipped = OnnxClassifier(quantize_int8(fp32, tmp_path / "int8.onnx"))
    report = check_batch_independence(shipped.run, tokenizer, texts, 64, "int8")
    assert report.passed and report.changed_texts == 0 and report.max_abs_prob_diff <= 1e-6
    # alone and in length-ordered batches of 32 (little padding, unlike the gate's shuffled batches): the same
    alone, _ = batched_outputs(shipped.run, tokenizer, texts, 64, batch_size=1)
    batched, _ = batched_outputs(shipped.run, tokenizer, texts, 64, batch_size=32)
    np.testing.assert_allclose(softmax(batched), softmax(alone), atol=1e-6)
    # ONNX Runtime's dynamic INT8 scales each batch tensor as a whole: the gate catches it on this model too
    dynamic = OnnxClassifier(quantize_int8_dynamic(fp32, tmp_path / "dynamic.onnx"))
    caught = check_batch_independence(dynamic.run, tokenizer, texts, 64, "int8")
    assert not caught.passed and caught.changed_texts > 50 and caught.max_abs_prob_diff > 5e-4


def test_an_export_whose_int8_depends_on_the_batch_serves_fp32(
    task_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tl_platform.export.exported_bundle.quantize_int8", batch_dependent_quantiser)
    exported = build_tiny_exported_bundle(task_bundle, tmp_path / "exported")
    gates = json.loads((exported / "reports" / "gates.json").read_text())
    # one text at a time it is FP32 exactly: the agreement gates pass, only batches tell
    assert gates["quantisation"]["label_agreement"] == gates["quantisation_validation"]["label_agreement"] == 1.0
    int8, fp32 = gates["batch_independence"], gates["batch_independence_fp32"]
    assert not int8["passed"] and int8["changed_labels"] > 0 and int8["changed_texts"] == 297
    assert fp32["passed"] and fp32["max_abs_prob_diff"] <= 1e-4
    serving = json.loads((exported / "serving.json").read_text())
    assert serving["precision"] == "fp32" and not serving["int8_gate"]["passed"]
    assert serving["int8_gate"]["reason"].startswith(
        f"INT8 answers depend on the batch: {int8['changed_labels']} of 297 texts changed label"
    )
    assert recorded_precision(exported) == "fp32" and gates["latency"]["precision"] == "fp32"

    settings = ExportConfig(latency_requests=20, latency_budget_p99_ms=1000.0, require_int8=True)
    required = build_tiny_exported_bundle(task_bundle, tmp_path / "required", settings)
    choice = json.loads((required / "reports" / "gates.json").read_text())["precision"]
    assert (choice["blocking"], choice["int8_passed"]) == (True, False)
