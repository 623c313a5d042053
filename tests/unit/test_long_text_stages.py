"""Head+tail truncation through every stage: a model trained head_tail is exported and served head_tail.

The tiny BERT is fine-tuned with ``truncation="head_tail"`` at the shortest window allowed (32 tokens), exported,
and loaded for serving; for texts longer than the window the ids the export runtime and the server feed the
model must equal the ids training fed it, token for token (a head-cut id list would lose the text's end).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_bundles import build_tiny_exported_bundle, build_tiny_task_bundle
from tl_platform.checkpoints import BundleError, verify_bundle
from tl_platform.export.exported_bundle import ExportConfig
from tl_platform.export.runtime import OnnxClassifier, encode
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.model import BundleModel, ServingTokenizer, load_variant
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.domain_adaptation import mlm_texts
from tl_platform.training.long_text import encode_texts, recorded_truncation
from tl_platform.training.text_data import TokenizedTexts

MAX_LENGTH = 32
LONG = " ".join(["good"] * 40 + ["fine"] * 20 + ["bad"] * 30)  # 90 words: one token each in the tiny vocabulary
TEXTS = [LONG, "the battery died after a day", "Great phone, works well. " * 12, ""]


@pytest.fixture(scope="module")
def bundles(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("head_tail")
    task = build_tiny_task_bundle(tiny_bert_dir, root / "task", epochs=1, max_length=MAX_LENGTH, truncation="head_tail")
    # this is about tokenisation, not INT8 quality: accept whatever INT8 does on a one-epoch tiny model
    settings = ExportConfig(latency_requests=10, latency_budget_p99_ms=1000.0, min_int8_agreement=0.5,
                            max_int8_accuracy_drop_points=50.0)
    return task, build_tiny_exported_bundle(task, root / "exported", settings)


def training_ids(task: Path, texts: list[str]) -> list[list[int]]:
    """The ids fine-tuning fed the model: TokenizedTexts with the task bundle's tokenizer and recorded config."""
    from transformers import AutoTokenizer

    config = verify_bundle(task, expected_stage="task").provenance["config"]
    tokenizer = AutoTokenizer.from_pretrained(task / "tokenizer")
    return TokenizedTexts(tokenizer, texts, int(config["max_length"]), truncation=config["truncation"]).input_ids


def test_the_strategy_is_recorded_from_training_to_serving(bundles: tuple[Path, Path]) -> None:
    task, exported = bundles
    assert verify_bundle(task, expected_stage="task").provenance["config"]["truncation"] == "head_tail"
    serving = json.loads((exported / "serving.json").read_text())
    assert (serving["max_length"], serving["truncation"]) == (MAX_LENGTH, "head_tail")
    gates = json.loads((exported / "reports" / "gates.json").read_text())
    assert gates["parity"]["passed"] and gates["batch_independence_fp32"]["passed"]  # judged on head+tail ids


def test_export_runtime_and_server_feed_the_model_the_training_ids(bundles: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    task, exported = bundles
    expected = training_ids(task, TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(task / "tokenizer")
    good, fine, bad = tokenizer.convert_tokens_to_ids(["good", "fine", "bad"])
    # training kept the long text's head and tail: 8 head tokens, 22 tail tokens, nothing of the middle
    assert expected[0] == [tokenizer.cls_token_id, *[good] * 8, *[bad] * 22, tokenizer.sep_token_id]
    assert fine not in expected[0]
    assert expected[0] != tokenizer([LONG], truncation=True, max_length=MAX_LENGTH)["input_ids"][0]

    serving = json.loads((exported / "serving.json").read_text())
    exported_tokenizer = AutoTokenizer.from_pretrained(exported / "tokenizer")
    runtime = encode(exported_tokenizer, TEXTS, serving["max_length"], serving["truncation"])
    unpadded = [list(row[mask == 1]) for row, mask in zip(runtime.input_ids, runtime.attention_mask, strict=True)]
    assert unpadded == expected
    np.testing.assert_array_equal(runtime.lengths, [len(ids) for ids in expected])

    for precision in ("int8", "fp32"):
        model = load_variant(VariantSpec("1", exported, precision))  # type: ignore[arg-type]
        served = model.tokenize(TEXTS)
        assert [list(t.input_ids) for t in served] == expected
        assert served[0].length == MAX_LENGTH and served[0].chars == len(LONG)
    # and the served answer is the export runtime's on the same ids
    model = load_variant(VariantSpec("1", exported, "fp32"))
    logits, _ = model.infer([t.input_ids for t in model.tokenize(TEXTS)])
    reference, _ = OnnxClassifier(exported / "model_fp32.onnx").run(runtime)
    np.testing.assert_allclose(logits, reference, atol=1e-5)


def test_the_monitoring_reference_counts_tokens_as_the_server_does(bundles: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    from tl_platform.export.monitoring_reference import input_feature_frame

    _, exported = bundles
    tokenizer = AutoTokenizer.from_pretrained(exported / "tokenizer")
    frame = input_feature_frame(tokenizer, TEXTS, MAX_LENGTH, truncation="head_tail")
    served = load_variant(VariantSpec("1", exported, "fp32")).tokenize(TEXTS)
    assert list(frame["token_count"]) == [t.length for t in served]


def test_a_bundle_naming_an_unknown_strategy_is_refused(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    _, exported = bundles
    altered = tmp_path / "altered"
    shutil.copytree(exported, altered)
    serving = json.loads((altered / "serving.json").read_text())
    (altered / "serving.json").write_text(json.dumps({**serving, "truncation": "middle"}))
    tokenizer = AutoTokenizer.from_pretrained(altered / "tokenizer")
    with pytest.raises(BundleError, match=r"truncation 'middle' is not one of \['head', 'head_tail'\]"):
        BundleModel("1", "fp32", altered, lambda encoded: (np.zeros(1), np.zeros(1)), tokenizer)
    # a bundle exported before the field: plain truncation, as it was trained
    assert recorded_truncation({"max_length": 64}, altered) == "head"


def test_serving_refuses_a_window_too_small_for_head_and_tail(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    message = r"head_tail needs a window of at least 4 tokens with this tokenizer \(2 special tokens, one head and one tail"
    with pytest.raises(ValueError, match=message):
        ServingTokenizer(tokenizer, 3, "head_tail")
    with pytest.raises(ValueError, match=message):
        encode_texts(tokenizer, ["a b c d"], 3, "head_tail")
    with pytest.raises(ValueError, match=r"truncation must be one of \['head', 'head_tail'\], got 'tail'"):
        ServingTokenizer(tokenizer, 32, "tail")  # type: ignore[arg-type]


def test_domain_adaptation_chunks_train_on_every_token(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = [LONG, "good bad"]
    head = mlm_texts(tokenizer, texts, DomainAdaptationConfig(max_length=32))
    chunks = mlm_texts(tokenizer, texts, DomainAdaptationConfig(max_length=32, truncation="chunks"))
    assert len(head) == 2 and len(chunks) == 4  # 90 tokens in windows of 30, then the short text whole
    content = [i for row in chunks.input_ids[:3] for i in row[1:-1]]
    assert content == tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert chunks.input_ids[3] == head.input_ids[1] and chunks.labels is None
