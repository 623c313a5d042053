"""Fine-tuning and domain adaptation on the tiny BERT: the library entry points, without Dagster or MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from tl_platform.data import DatasetSplits, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.classifier import build_classifier, fine_tune_classifier
from tl_platform.training.config import DomainAdaptationConfig, FineTuneConfig
from tl_platform.training.domain_adaptation import FixedMaskedBatches, adapt_to_domain


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    return stratified_split(load_labelled_text(bundled_source("amazon")), SplitFractions(), seed=0)


@pytest.mark.parametrize(
    ("method", "trainable_share"),
    [("full", 1.0), ("lora", None)],
)
def test_fine_tuning_learns_and_restores_the_best_epoch(
    tiny_bert_dir: Path, splits: DatasetSplits, tmp_path: Path, method: str, trainable_share: float | None
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tracker = NullTracker()
    config = FineTuneConfig(method=method, epochs=3, learning_rate=3e-3, early_stopping_patience=1, seed=1)  # type: ignore[arg-type]
    result = fine_tune_classifier(tiny_bert_dir, tokenizer, splits, config, tmp_path, tracker)

    assert 1 <= len(result.epochs) <= 3
    best = min(result.epochs, key=lambda e: e.eval_loss)
    assert result.best_epoch == best.epoch
    # the model handed back is the best checkpoint: its validation loss is the best epoch's
    assert result.validation_report.n == len(splits.validation)
    assert result.test_report.n == len(splits.test)
    logged = [m for _, m in tracker.metrics if "eval_loss" in m]
    assert [m["eval_loss"] for m in logged] == pytest.approx([e.eval_loss for e in result.epochs])
    if method == "full":
        # chance is 0.5; fully trained, even this random tiny model learns the sentiment words
        # (LoRA on a random base barely moves it; the real MiniLM is tested in tests/integration)
        assert result.test_report.accuracy > 0.6
        assert result.trainable_parameters == result.total_parameters
        assert result.adapter_dir is None
    else:
        assert result.trainable_parameters < result.total_parameters / 2
        assert result.adapter_dir is not None and (result.adapter_dir / "adapter_config.json").is_file()
        assert not any("lora_" in name for name, _ in result.model.named_parameters())  # merged


def test_lora_scores_the_same_after_merging(tiny_bert_dir: Path, splits: DatasetSplits, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = FineTuneConfig(method="lora", epochs=1, learning_rate=3e-3)
    result = fine_tune_classifier(tiny_bert_dir, tokenizer, splits, config, tmp_path, NullTracker())
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    unmerged = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    batch = tokenizer(list(splits.test.texts[:16]), padding=True, return_tensors="pt")
    with torch.inference_mode():
        np.testing.assert_allclose(
            unmerged(**batch).logits.numpy(), result.model.eval()(**batch).logits.numpy(), atol=1e-4
        )


def test_unknown_lora_target_names_the_modules_that_exist(tiny_bert_dir: Path) -> None:
    from tl_platform.data.bundled import SENTIMENT_SCHEMA

    config = FineTuneConfig(method="lora", lora_target_modules=("q_proj",))
    with pytest.raises(ValueError, match=r"lora_target_modules names \['q_proj'\].*'query'"):
        build_classifier(tiny_bert_dir, SENTIMENT_SCHEMA, config)


def test_mixed_precision_on_cpu_is_refused(tiny_bert_dir: Path, splits: DatasetSplits, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a GPU"):
        fine_tune_classifier(tiny_bert_dir, tokenizer, splits, FineTuneConfig(mixed_precision="fp16"), tmp_path, NullTracker())


def test_fixed_masking_is_the_same_every_time(tiny_bert_dir: Path, splits: DatasetSplits) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = DomainAdaptationConfig(seed=5)
    first = FixedMaskedBatches(tokenizer, splits.test.texts, config)
    second = FixedMaskedBatches(tokenizer, splits.test.texts, config)
    assert first.masked_tokens == second.masked_tokens > 0
    for a, b in zip(first.batches, second.batches, strict=True):
        assert (a["input_ids"] == b["input_ids"]).all() and (a["labels"] == b["labels"]).all()
    other = FixedMaskedBatches(tokenizer, splits.test.texts, DomainAdaptationConfig(seed=6))
    assert not all((a["labels"] == b["labels"]).all() for a, b in zip(first.batches, other.batches, strict=False))


def test_heldout_needs_text(tiny_bert_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with pytest.raises(ValueError, match="held-out perplexity needs at least one text"):
        FixedMaskedBatches(tokenizer, [], DomainAdaptationConfig())


def test_domain_adaptation_lowers_heldout_perplexity(tiny_bert_dir: Path, splits: DatasetSplits, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = DomainAdaptationConfig(epochs=2, head_warmup_epochs=1, learning_rate=5e-4)
    tracker = NullTracker()
    result = adapt_to_domain(
        tiny_bert_dir, tokenizer, splits.train.texts, splits.validation.texts + splits.test.texts, config, tmp_path, tracker
    )
    assert result.mlm_head_was_missing  # the tiny model is saved as a bare encoder, like all-MiniLM-L6-v2
    assert result.head_warmup_epochs == 1
    assert result.perplexity_after < result.perplexity_before
    assert len(result.perplexity_by_epoch) == 2 and result.perplexity_by_epoch[-1] == pytest.approx(result.perplexity_after)
    # the adapted encoder has the foundation's architecture and changed weights
    assert type(result.encoder).__name__ == "BertModel"
    logged = [m["heldout_perplexity"] for _, m in tracker.metrics if "heldout_perplexity" in m]
    assert logged == pytest.approx([result.perplexity_before, *result.perplexity_by_epoch])
    assert any("head_warmup/loss" in m for _, m in tracker.metrics)
