"""Domain-adaptive pretraining: continued masked-language-model training on unlabelled in-domain text.

Held-out perplexity is measured before and after on one fixed masking of the held-out text (same positions,
same replacements), so the two numbers differ only by the model. Sentence-embedding checkpoints such as
all-MiniLM-L6-v2 ship without an MLM head; the head is then fitted first with the encoder frozen, so that
"before" measures what the foundation encoder knows rather than a random head.

Long texts: ``DomainAdaptationConfig.truncation`` keeps each text's first ``max_length`` tokens (``head``) or
trains on every token in consecutive windows (``chunks``); the held-out text is cut the same way, so perplexity
is measured on the kind of window training sees. ``train_texts`` in the result counts texts, not windows.

The MLM loss, in training and in every perplexity, scores the masked positions only (``mlm_loss``): the same
number as the model's own full-vocabulary loss, for a fraction of the head's work. A model for which that
cannot be shown on the held-out text's first batch keeps its own forward; the result says which path ran.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from tl_platform.tracking.protocol import RunTracker
from tl_platform.training.callbacks import ProgressLogCallback, TrackerCallback
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.mlm_loss import MaskedOnlyMLMTrainer, MlmLoss, mlm_loss, resolve_mlm_loss
from tl_platform.training.text_data import TokenizedTexts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class DomainAdaptationResult:
    """The adapted encoder (no MLM head; same architecture as the foundation encoder) and its perplexities."""

    encoder: PreTrainedModel
    perplexity_before: float
    perplexity_after: float
    perplexity_by_epoch: tuple[float, ...]
    mlm_head_was_missing: bool
    head_warmup_epochs: int
    train_texts: int
    heldout_texts: int
    heldout_masked_tokens: int
    train_seconds: float
    train_samples_per_second: float
    mlm_loss: MlmLoss = "masked_only"
    train_windows: int = 0  # MLM sequences trained on: train_texts with truncation "head", more with "chunks"

    @property
    def perplexity_fell(self) -> bool:
        return self.perplexity_after < self.perplexity_before

    def summary(self) -> dict[str, float]:
        return {
            "perplexity_before": self.perplexity_before,
            "perplexity_after": self.perplexity_after,
            "perplexity_ratio": self.perplexity_after / self.perplexity_before,
            "train_texts": float(self.train_texts),
            "train_windows": float(self.train_windows),
            "heldout_texts": float(self.heldout_texts),
            "heldout_masked_tokens": float(self.heldout_masked_tokens),
            "train_seconds": self.train_seconds,
            "train_samples_per_second": self.train_samples_per_second,
        }


class FixedMaskedBatches:
    """Held-out text masked once, from a seed, and reused for every perplexity measurement."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], config: DomainAdaptationConfig, batch_size: int = 64
    ) -> None:
        from transformers import DataCollatorForLanguageModeling

        if not texts:
            raise ValueError("held-out perplexity needs at least one text")
        import torch

        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability)
        # The collator's own ``seed`` refuses to run outside the main process (Dagster runs steps in child
        # processes), so its masking is given a seeded generator directly.
        collator.generator = torch.Generator().manual_seed(config.seed)
        dataset = mlm_texts(tokenizer, texts, config)
        self.batches: list[dict[str, torch.Tensor]] = [
            collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            for start in range(0, len(dataset), batch_size)
        ]
        self.masked_tokens = int(sum(int((b["labels"] != -100).sum()) for b in self.batches))
        if self.masked_tokens == 0:
            raise ValueError(f"masking {len(texts)} held-out texts selected no tokens; give longer or more texts")

    def perplexity(self, model: PreTrainedModel, how: MlmLoss = "full_vocabulary") -> float:
        """exp of the mean cross-entropy per masked token (token-weighted across batches).

        ``how`` picks the loss path; both give the same number (``mlm_loss.resolve_mlm_loss`` checks a model).
        """
        import torch

        was_training = model.training
        model.eval()
        total = 0.0
        device = next(model.parameters()).device
        with torch.inference_mode():
            for batch in self.batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                masked = int((batch["labels"] != -100).sum())
                if masked:
                    total += float(mlm_loss(model, batch, how)) * masked
        model.train(was_training)
        return math.exp(total / self.masked_tokens)


def adapt_to_domain(
    model_dir: Path | str,
    tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str],
    heldout_texts: Sequence[str],
    config: DomainAdaptationConfig,
    work_dir: Path,
    tracker: RunTracker,
    *,
    loss: MlmLoss = "masked_only",
) -> DomainAdaptationResult:
    """Continue MLM pretraining of the encoder in ``model_dir`` on ``train_texts``; measure held-out perplexity.

    ``loss="full_vocabulary"`` trains and measures with the model's own forward (the reference path); the
    default scores masked positions only, when ``resolve_mlm_loss`` finds the model supports it.
    """
    from transformers import AutoModel, AutoModelForMaskedLM, set_seed

    if not train_texts:
        raise ValueError("domain adaptation needs at least one in-domain training text")
    set_seed(config.seed)
    mlm, loading = AutoModelForMaskedLM.from_pretrained(
        model_dir, output_loading_info=True, local_files_only=True, use_safetensors=True
    )
    base_prefix = f"{mlm.base_model_prefix}."
    head_missing = any(not key.startswith(base_prefix) for key in loading["missing_keys"])
    heldout = FixedMaskedBatches(tokenizer, heldout_texts, config)
    how = resolve_mlm_loss(mlm, heldout.batches[0], loss)
    train_set = mlm_texts(tokenizer, train_texts, config)

    warmup_epochs = config.head_warmup_epochs if head_missing else 0
    if warmup_epochs:
        set_base_trainable(mlm, False)
        train_mlm(mlm, tokenizer, train_set, config, work_dir / "head_warmup", tracker, "head_warmup/",
                   epochs=warmup_epochs, learning_rate=config.head_warmup_learning_rate, loss=how)
        set_base_trainable(mlm, True)

    before = heldout.perplexity(mlm, how)
    tracker.log_metrics({"heldout_perplexity": before}, step=0)
    per_epoch = PerplexityCallback(heldout, tracker, how)
    started = time.perf_counter()
    metrics = train_mlm(mlm, tokenizer, train_set, config, work_dir / "mlm", tracker, "mlm/",
                        epochs=config.epochs, learning_rate=config.learning_rate, extra_callbacks=[per_epoch], loss=how)
    train_seconds = time.perf_counter() - started
    after = heldout.perplexity(mlm, how)

    encoder = AutoModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    missing, unexpected = encoder.load_state_dict(mlm.base_model.state_dict(), strict=False)
    # The MLM model carries no pooler; the encoder keeps the foundation's. Anything else is a mismatch.
    unexplained = [k for k in missing if not k.startswith("pooler.")]
    if unexpected or unexplained:
        raise RuntimeError(f"adapted weights do not fit the encoder: missing {unexplained}, unexpected {unexpected}")
    return DomainAdaptationResult(
        encoder=encoder,
        perplexity_before=before,
        perplexity_after=after,
        perplexity_by_epoch=tuple(per_epoch.perplexities),
        mlm_head_was_missing=head_missing,
        head_warmup_epochs=warmup_epochs,
        train_texts=len(train_texts),
        heldout_texts=len(heldout_texts),
        heldout_masked_tokens=heldout.masked_tokens,
        train_seconds=train_seconds,
        train_samples_per_second=float(metrics["train_samples_per_second"]),
        mlm_loss=how,
        train_windows=len(train_set),
    )


def mlm_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], config: DomainAdaptationConfig) -> TokenizedTexts:
    """The MLM windows of ``texts``: each text's first ``max_length`` tokens (``head``), or all of its tokens in
    consecutive windows (``chunks``; see ``DomainAdaptationConfig.truncation``)."""
    if config.truncation == "chunks":
        return TokenizedTexts.chunked(tokenizer, texts, config.max_length)
    return TokenizedTexts(tokenizer, texts, config.max_length)


def set_base_trainable(model: PreTrainedModel, trainable: bool) -> None:
    for parameter in model.base_model.parameters():
        parameter.requires_grad_(trainable)


class PerplexityCallback(TrainerCallback):
    """Held-out perplexity at the end of every epoch, on the same fixed masking as before and after."""

    def __init__(self, heldout: FixedMaskedBatches, tracker: RunTracker, how: MlmLoss = "full_vocabulary") -> None:
        self.heldout = heldout
        self.tracker = tracker
        self.how = how
        self.perplexities: list[float] = []

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        value = self.heldout.perplexity(model, self.how)
        self.perplexities.append(value)
        self.tracker.log_metrics({"heldout_perplexity": value}, step=len(self.perplexities))


def train_mlm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_set: TokenizedTexts,
    config: DomainAdaptationConfig,
    output_dir: Path,
    tracker: RunTracker,
    prefix: str,
    *,
    epochs: int,
    learning_rate: float,
    extra_callbacks: list[TrainerCallback] | None = None,
    loss: MlmLoss = "masked_only",
) -> dict[str, float]:
    """Train ``model`` with the Trainer; ``loss`` picks masked-only scoring or the model's own forward."""
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    steps = epochs * max(1, -(-len(train_set) // config.batch_size))
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=round(config.warmup_ratio * steps),
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="epoch",
        use_cpu=not torch.cuda.is_available(),
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mlm_probability)
    trainer_class = MaskedOnlyMLMTrainer if loss == "masked_only" else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=collator,
        callbacks=[TrackerCallback(tracker, prefix=prefix), ProgressLogCallback(f"domain adaptation ({prefix.rstrip('/') or 'mlm'})"),
                   *(extra_callbacks or [])],
    )
    return dict(trainer.train().metrics)
