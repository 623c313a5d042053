"""The masked-only MLM loss equals the model's own full-vocabulary loss: the number, its gradients, training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    DistilBertConfig,
    DistilBertForMaskedLM,
    PreTrainedTokenizerBase,
)

from tl_platform.data import DatasetSplits, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.domain_adaptation import FixedMaskedBatches, adapt_to_domain, train_mlm
from tl_platform.training.mlm_loss import (
    full_vocabulary_loss,
    masked_only_loss,
    mlm_head,
    mlm_loss,
    resolve_mlm_loss,
)
from tl_platform.training.text_data import TokenizedTexts


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    return stratified_split(load_labelled_text(bundled_source("amazon")), SplitFractions(), seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def tiny_mlm(tiny_bert_dir: Path) -> BertForMaskedLM:
    torch.manual_seed(0)  # the MLM head is missing from the checkpoint and initialised at random
    return AutoModelForMaskedLM.from_pretrained(tiny_bert_dir, local_files_only=True)  # type: ignore[no-any-return]


def masked_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str], seed: int = 3) -> dict[str, torch.Tensor]:
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    collator.generator = torch.Generator().manual_seed(seed)
    encoded = TokenizedTexts(tokenizer, texts, max_length=64)
    return collator([encoded[i] for i in range(len(encoded))])  # type: ignore[no-any-return]


def test_the_head_is_found_for_bert(tiny_bert_dir: Path) -> None:
    model = tiny_mlm(tiny_bert_dir)
    assert mlm_head(model) is model.cls


def test_same_batch_same_masking_gives_the_same_loss(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, splits: DatasetSplits) -> None:
    model = tiny_mlm(tiny_bert_dir).eval()
    head = mlm_head(model)
    assert head is not None
    for seed in range(3):
        batch = masked_batch(tokenizer, list(splits.train.texts[:32]), seed=seed)
        masked = int((batch["labels"] != -100).sum())
        assert 0 < masked < batch["labels"].numel() * 0.3  # about 15% of the real tokens are scored
        with torch.no_grad():
            sparse = float(masked_only_loss(model, head, batch))
            full = float(model(**batch).loss)
        assert sparse == pytest.approx(full, abs=1e-5)
        assert 4.0 < full < 9.0  # a random head over a ~600-word vocabulary: about ln(605) = 6.4


def test_gradients_are_the_same_in_training_mode(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, splits: DatasetSplits) -> None:
    """Dropout draws the same masks when seeded alike, so the two paths give one update, parameter by parameter."""
    sparse_model = tiny_mlm(tiny_bert_dir).train()
    full_model = copy.deepcopy(sparse_model)
    batch = masked_batch(tokenizer, list(splits.train.texts[:16]))
    torch.manual_seed(11)
    sparse = masked_only_loss(sparse_model, mlm_head(sparse_model), batch)  # type: ignore[arg-type]
    sparse.backward()
    torch.manual_seed(11)
    full = full_vocabulary_loss(full_model, batch)
    full.backward()
    assert float(sparse.detach()) == pytest.approx(float(full.detach()), abs=1e-5)
    full_grads = dict(full_model.named_parameters())
    compared = 0
    for name, parameter in sparse_model.named_parameters():
        other = full_grads[name].grad
        assert parameter.grad is not None and other is not None, name
        torch.testing.assert_close(parameter.grad, other, atol=1e-6, rtol=1e-4, msg=name)
        compared += 1
    assert compared == len(full_grads) > 20  # every weight, the tied word embeddings and the head included


def test_a_batch_without_masked_positions_gives_zero_not_nan(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_mlm(tiny_bert_dir)
    batch = masked_batch(tokenizer, ["good phone"])
    batch["labels"] = torch.full_like(batch["labels"], -100)
    loss = masked_only_loss(model, mlm_head(model), batch)  # type: ignore[arg-type]
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in model.parameters())
    assert torch.isnan(full_vocabulary_loss(model, batch))  # what the model's own forward gives


def test_heldout_perplexity_is_the_same_by_both_paths(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, splits: DatasetSplits) -> None:
    model = tiny_mlm(tiny_bert_dir)
    heldout = FixedMaskedBatches(tokenizer, splits.validation.texts + splits.test.texts, DomainAdaptationConfig(seed=4))
    full = heldout.perplexity(model, "full_vocabulary")
    sparse = heldout.perplexity(model, "masked_only")
    assert sparse == pytest.approx(full, rel=1e-5)
    assert 100 < full < 2000  # a random head over ~605 tokens


def test_training_by_both_paths_gives_the_same_losses_and_weights(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, splits: DatasetSplits, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tl_platform.training import mlm_loss as module

    calls = []
    real = module.masked_only_loss

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "masked_only_loss", counting)
    config = DomainAdaptationConfig(batch_size=16, learning_rate=1e-3, seed=7, warmup_ratio=0.0)
    train_set = TokenizedTexts(tokenizer, splits.train.texts[:96], config.max_length)
    start = tiny_mlm(tiny_bert_dir)
    trained = {}
    logged = {}
    for how in ("full_vocabulary", "masked_only"):
        model = copy.deepcopy(start)
        tracker = NullTracker()
        metrics = train_mlm(model, tokenizer, train_set, config, tmp_path / how, tracker, "mlm/", epochs=2,
                            learning_rate=config.learning_rate, loss=how)  # type: ignore[arg-type]
        trained[how] = model
        logged[how] = [m["mlm/loss"] for _, m in tracker.metrics if "mlm/loss" in m]
        assert metrics["train_loss"] > 0
    assert len(calls) == 12  # the masked-only run scored its 2 x 6 steps by the gather; the reference never did
    assert len(logged["masked_only"]) == 2
    assert logged["masked_only"] == pytest.approx(logged["full_vocabulary"], rel=1e-4)
    full_weights = dict(trained["full_vocabulary"].named_parameters())
    moved = 0.0
    for name, parameter in trained["masked_only"].named_parameters():
        torch.testing.assert_close(parameter, full_weights[name], atol=1e-4, rtol=1e-3, msg=name)
        moved = max(moved, float((parameter - dict(start.named_parameters())[name]).abs().max()))
    assert moved > 1e-3  # 12 steps at 1e-3 did move the weights, alike on both paths


def test_adaptation_reports_the_masked_only_path_and_matches_the_reference(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, splits: DatasetSplits, tmp_path: Path
) -> None:
    config = DomainAdaptationConfig(epochs=1, head_warmup_epochs=1, learning_rate=5e-4, batch_size=16)
    results = {
        how: adapt_to_domain(tiny_bert_dir, tokenizer, splits.train.texts[:160], splits.validation.texts, config,
                             tmp_path / how, NullTracker(), loss=how)  # type: ignore[arg-type]
        for how in ("full_vocabulary", "masked_only")
    }
    assert results["masked_only"].mlm_loss == "masked_only" and results["full_vocabulary"].mlm_loss == "full_vocabulary"
    for field in ("perplexity_before", "perplexity_after"):
        assert getattr(results["masked_only"], field) == pytest.approx(getattr(results["full_vocabulary"], field), rel=1e-3)
    assert results["masked_only"].perplexity_fell


class ScaledLossBert(BertForMaskedLM):
    """Encoder plus one head, like BERT, but its forward does something more: the masked-only path would be wrong."""

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = super().forward(*args, **kwargs)
        output.loss = output.loss * 2
        return output


def test_a_model_whose_loss_disagrees_keeps_its_own_forward(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    batch = masked_batch(tokenizer, ["the battery died", "great sound and a fair price"] * 4)
    torch.manual_seed(0)
    scaled = ScaledLossBert.from_pretrained(tiny_bert_dir, local_files_only=True)
    assert mlm_head(scaled) is scaled.cls  # qualifies by its shape ...
    assert resolve_mlm_loss(scaled, batch, "masked_only") == "full_vocabulary"  # ... but not by its numbers
    assert resolve_mlm_loss(tiny_mlm(tiny_bert_dir), batch, "masked_only") == "masked_only"
    assert resolve_mlm_loss(tiny_mlm(tiny_bert_dir), batch, "full_vocabulary") == "full_vocabulary"
    with pytest.raises(ValueError, match=r"mlm_loss must be one of \['masked_only', 'full_vocabulary'\], got 'sparse'"):
        resolve_mlm_loss(scaled, batch, "sparse")  # type: ignore[arg-type]


def test_a_model_with_a_split_head_is_not_taken_apart(tokenizer: PreTrainedTokenizerBase) -> None:
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    distil = DistilBertForMaskedLM(config)
    assert mlm_head(distil) is None  # transform, norm and projector are separate modules: only its forward knows
    batch = masked_batch(tokenizer, ["fine phone", "bad case"])
    batch.pop("token_type_ids", None)
    assert resolve_mlm_loss(distil, batch, "masked_only") == "full_vocabulary"
    with pytest.raises(ValueError, match=r"DistilBertForMaskedLM is not an encoder plus one MLM head; use 'full_vocabulary'"):
        mlm_loss(distil, batch, "masked_only")
