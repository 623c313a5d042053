"""Typed, validated configs of the training stages; a bad value names the field and the allowed range."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from tl_platform.training.long_text import (
    MIN_HEAD_TAIL_LENGTH,
    MLM_TEXT_STRATEGIES,
    TRUNCATION_STRATEGIES,
    MlmTextStrategy,
    TruncationStrategy,
)
from tl_platform.validation import require as _require

FineTuneMethod = Literal["lora", "full"]
MixedPrecision = Literal["no", "fp16", "bf16"]



@dataclass(frozen=True)
class FineTuneConfig:
    """Sequence-classification fine-tuning.

    Attributes:
        method: ``lora`` trains low-rank adapters plus the classifier head; ``full`` trains every weight.
        epochs: maximum epochs; early stopping may end sooner.
        batch_size: examples per optimiser step on each device (before gradient accumulation).
        learning_rate: rate of the classifier head; None picks 1e-3 for LoRA and 1e-4 for full fine-tuning.
        layer_lr_decay: each transformer layer below the head gets the rate of the layer above times this;
            embeddings sit one step below the lowest layer. 1.0 turns the decay off.
        weight_decay: AdamW decoupled weight decay, not applied to biases and LayerNorm weights.
        warmup_ratio: share of the optimiser steps spent in linear warm-up.
        early_stopping_patience: epochs without a lower validation loss before training stops.
        max_length: tokens per example after truncation.
        truncation: how a text longer than ``max_length`` is cut: ``head`` keeps its first tokens (the default);
            ``head_tail`` keeps a quarter of the window from its start and the rest from its end (needs max_length
            >= 32; see ``long_text``). The task bundle records it, and export and serving cut text the same way.
        lora_r / lora_alpha / lora_dropout / lora_target_modules: the LoRA adapters (method=lora).
        gradient_accumulation_steps: micro-batches summed into one optimiser step.
        mixed_precision: ``fp16`` or ``bf16`` on a GPU; ``no`` on CPU.
        seed: seeds weight init, dropout and data order.
    """

    method: FineTuneMethod = "lora"
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float | None = None
    layer_lr_decay: float = 0.9
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    early_stopping_patience: int = 2
    max_length: int = 64
    truncation: TruncationStrategy = "head"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    gradient_accumulation_steps: int = 1
    mixed_precision: MixedPrecision = "no"
    seed: int = 42

    def __post_init__(self) -> None:
        _require(self.method in ("lora", "full"), f"FineTuneConfig.method must be 'lora' or 'full', got {self.method!r}")
        _require(1 <= self.epochs <= 1000, f"FineTuneConfig.epochs must be in [1, 1000], got {self.epochs}")
        _require(1 <= self.batch_size <= 4096, f"FineTuneConfig.batch_size must be in [1, 4096], got {self.batch_size}")
        if self.learning_rate is not None:
            _require(0 < self.learning_rate < 1, f"FineTuneConfig.learning_rate must be in (0, 1), got {self.learning_rate}")
        _require(0 < self.layer_lr_decay <= 1, f"FineTuneConfig.layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        _require(0 <= self.weight_decay < 1, f"FineTuneConfig.weight_decay must be in [0, 1), got {self.weight_decay}")
        _require(0 <= self.warmup_ratio < 1, f"FineTuneConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _require(
            self.early_stopping_patience >= 1,
            f"FineTuneConfig.early_stopping_patience must be at least 1, got {self.early_stopping_patience}",
        )
        _require(8 <= self.max_length <= 8192, f"FineTuneConfig.max_length must be in [8, 8192], got {self.max_length}")
        _require(
            self.truncation in TRUNCATION_STRATEGIES,
            f"FineTuneConfig.truncation must be one of {list(TRUNCATION_STRATEGIES)}, got {self.truncation!r}",
        )
        _require(
            self.truncation != "head_tail" or self.max_length >= MIN_HEAD_TAIL_LENGTH,
            f"FineTuneConfig.truncation='head_tail' needs max_length >= {MIN_HEAD_TAIL_LENGTH} to hold a head and a "
            f"tail, got {self.max_length}; raise max_length or use truncation='head'",
        )
        _require(1 <= self.lora_r <= 1024, f"FineTuneConfig.lora_r must be in [1, 1024], got {self.lora_r}")
        _require(self.lora_alpha >= 1, f"FineTuneConfig.lora_alpha must be at least 1, got {self.lora_alpha}")
        _require(0 <= self.lora_dropout < 1, f"FineTuneConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _require(
            self.method != "lora" or len(self.lora_target_modules) > 0,
            "FineTuneConfig.lora_target_modules must name at least one module for method='lora'",
        )
        _require(
            self.gradient_accumulation_steps >= 1,
            f"FineTuneConfig.gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}",
        )
        _require(
            self.mixed_precision in ("no", "fp16", "bf16"),
            f"FineTuneConfig.mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}",
        )

    @property
    def base_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.method == "lora" else 1e-4

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["learning_rate"] = self.base_learning_rate
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data


@dataclass(frozen=True)
class DomainAdaptationConfig:
    """Continued masked-language-model pretraining on unlabelled in-domain text.

    Attributes:
        enabled: False skips the stage and passes the foundation model through unchanged.
        epochs: passes over the in-domain text.
        batch_size: texts per optimiser step.
        learning_rate: peak AdamW rate of the encoder and MLM head.
        mlm_probability: share of tokens masked (BERT's 15% by default).
        max_length: tokens per training window.
        truncation: what happens to a text longer than ``max_length``: ``head`` keeps its first tokens (the
            default); ``chunks`` trains on all of it, in consecutive windows of ``max_length`` tokens (more
            windows, more compute). Head+tail is a fine-tuning setting: the MLM objective needs no label-bearing end,
            and joining a text's two ends would teach a seam no real text has.
        head_warmup_epochs: when the checkpoint has no MLM head (sentence-embedding models ship none), the
            head is first fitted with the encoder frozen for this many epochs, so that "perplexity before"
            measures the foundation encoder and not a random head. Ignored when the head was in the checkpoint.
        head_warmup_learning_rate: the rate used for that head-only fit.
        weight_decay / warmup_ratio: as in fine-tuning.
        seed: seeds the masking of the held-out text (identical before and after) and training.
    """

    enabled: bool = True
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    mlm_probability: float = 0.15
    max_length: int = 64
    truncation: MlmTextStrategy = "head"
    head_warmup_epochs: int = 3
    head_warmup_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42

    def __post_init__(self) -> None:
        _require(1 <= self.epochs <= 1000, f"DomainAdaptationConfig.epochs must be in [1, 1000], got {self.epochs}")
        _require(1 <= self.batch_size <= 4096, f"DomainAdaptationConfig.batch_size must be in [1, 4096], got {self.batch_size}")
        _require(0 < self.learning_rate < 1, f"DomainAdaptationConfig.learning_rate must be in (0, 1), got {self.learning_rate}")
        _require(
            0 < self.mlm_probability < 1,
            f"DomainAdaptationConfig.mlm_probability must be in (0, 1), got {self.mlm_probability}",
        )
        _require(8 <= self.max_length <= 8192, f"DomainAdaptationConfig.max_length must be in [8, 8192], got {self.max_length}")
        hint = " (head_tail is fine-tuning's; for MLM, chunks trains on the whole text)" if self.truncation == "head_tail" else ""
        _require(
            self.truncation in MLM_TEXT_STRATEGIES,
            f"DomainAdaptationConfig.truncation must be one of {list(MLM_TEXT_STRATEGIES)}, got {self.truncation!r}{hint}",
        )
        _require(
            0 <= self.head_warmup_epochs <= 100,
            f"DomainAdaptationConfig.head_warmup_epochs must be in [0, 100], got {self.head_warmup_epochs}",
        )
        _require(
            0 < self.head_warmup_learning_rate < 1,
            f"DomainAdaptationConfig.head_warmup_learning_rate must be in (0, 1), got {self.head_warmup_learning_rate}",
        )
        _require(0 <= self.weight_decay < 1, f"DomainAdaptationConfig.weight_decay must be in [0, 1), got {self.weight_decay}")
        _require(0 <= self.warmup_ratio < 1, f"DomainAdaptationConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def to_json(self) -> dict[str, object]:
        return asdict(self)
