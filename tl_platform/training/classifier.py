"""Sequence-classification fine-tuning (LoRA or full) on Transformers' Trainer.

The Trainer brings mixed precision, gradient accumulation and torchrun multi-GPU; this module adds what the
platform decides: layer-wise learning-rate decay by depth, AdamW with decoupled weight decay, linear warm-up,
early stopping on validation loss with the best checkpoint restored, and scores on the frozen eval suite.
Tracking plugs in through a ``RunTracker``; nothing here knows about Dagster or MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_platform.data.schema import LabelSchema
from tl_platform.data.splits import DatasetSplits
from tl_platform.evaluation.metrics import (
    ClassificationReport,
    classification_report,
    softmax,
)
from tl_platform.tracking.protocol import RunTracker
from tl_platform.training.callbacks import ProgressLogCallback, TrackerCallback
from tl_platform.training.config import FineTuneConfig
from tl_platform.training.layerwise import (
    ParameterGroupSummary,
    layerwise_parameter_groups,
)
from tl_platform.training.text_data import TokenizedTexts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer


@dataclass(frozen=True)
class EpochScores:
    epoch: int
    train_loss: float | None
    eval_loss: float


@dataclass(frozen=True)
class FineTuneResult:
    """A fine-tuned classifier and how it got there.

    ``model`` is a plain Transformers model (LoRA adapters merged in), ready to save and export;
    ``adapter_dir`` holds the unmerged LoRA adapter when ``method`` was ``lora``.
    """

    model: PreTrainedModel
    adapter_dir: Path | None
    test_report: ClassificationReport
    validation_report: ClassificationReport
    epochs: tuple[EpochScores, ...]
    best_epoch: int
    stopped_early: bool
    train_seconds: float
    train_samples_per_second: float
    trainable_parameters: int
    total_parameters: int
    parameter_groups: tuple[ParameterGroupSummary, ...]

    def summary(self) -> dict[str, float]:
        return {
            **self.test_report.summary("test_"),
            "validation_accuracy": self.validation_report.accuracy,
            "best_epoch": float(self.best_epoch),
            "epochs_run": float(len(self.epochs)),
            "train_seconds": self.train_seconds,
            "train_samples_per_second": self.train_samples_per_second,
            "trainable_parameters": float(self.trainable_parameters),
            "total_parameters": float(self.total_parameters),
        }


def build_classifier(model_dir: Path | str, schema: LabelSchema, config: FineTuneConfig) -> Any:
    """A sequence classifier on the given encoder, wrapped in LoRA adapters when the method asks for it.

    Returns a ``PreTrainedModel`` for full fine-tuning and a ``PeftModel`` wrapping one for LoRA.
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=schema.num_labels,
        id2label=dict(enumerate(schema.names)),
        label2id={name: i for i, name in enumerate(schema.names)},
        local_files_only=True,
        use_safetensors=True,
    )
    if config.method == "full":
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = sorted(set(config.lora_target_modules) - present)
    if unknown:
        raise ValueError(
            f"FineTuneConfig.lora_target_modules names {unknown}, which {type(model).__name__} does not have; "
            f"linear modules it has include {sorted(_linear_module_names(model))}"
        )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
    )
    return get_peft_model(model, lora)


def _linear_module_names(model: torch.nn.Module) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def training_arguments(config: FineTuneConfig, output_dir: Path, steps_per_epoch: int) -> Any:
    """TrainingArguments for per-epoch evaluation, early stopping on validation loss and the best checkpoint kept."""
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    if config.mixed_precision != "no" and not on_gpu:
        raise ValueError(
            f"FineTuneConfig.mixed_precision={config.mixed_precision!r} needs a GPU and none is visible; use 'no' on CPU"
        )
    total_steps = steps_per_epoch * config.epochs
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 64),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.base_learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=round(config.warmup_ratio * total_steps),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_only_model=True,
        save_total_limit=1,
        fp16=config.mixed_precision == "fp16",
        bf16=config.mixed_precision == "bf16",
        use_cpu=not on_gpu,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def fine_tune_classifier(
    model_dir: Path | str,
    tokenizer: PreTrainedTokenizerBase,
    splits: DatasetSplits,
    config: FineTuneConfig,
    work_dir: Path,
    tracker: RunTracker,
) -> FineTuneResult:
    """Fine-tune the encoder in ``model_dir`` on ``splits.train``; early-stop on validation; score the test split."""
    import torch
    from transformers import (
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        Trainer,
        set_seed,
    )

    set_seed(config.seed)
    schema = splits.train.schema
    model = build_classifier(model_dir, schema, config)
    num_layers = int(model.config.num_hidden_layers)
    param_groups, group_summaries = layerwise_parameter_groups(
        model, num_layers, config.base_learning_rate, config.layer_lr_decay, config.weight_decay
    )
    optimizer = torch.optim.AdamW(param_groups, lr=config.base_learning_rate)

    datasets = {
        name: TokenizedTexts(tokenizer, split.texts, config.max_length, split.labels, config.truncation)
        for name, split in splits.by_name().items()
    }
    effective_batch = config.batch_size * config.gradient_accumulation_steps
    steps_per_epoch = max(1, -(-len(datasets["train"]) // effective_batch))
    tracker_callback = TrackerCallback(tracker, prefix="")
    trainer = Trainer(
        model=model,
        args=training_arguments(config, work_dir / "checkpoints", steps_per_epoch),
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        optimizers=(optimizer, None),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience), tracker_callback,
                   ProgressLogCallback(f"fine-tuning ({config.method})")],
    )
    started = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - started

    epochs = _epoch_scores(trainer)
    best_epoch = _best_epoch(trainer, epochs)
    validation_report = _score(trainer, datasets["validation"], schema)
    test_report = _score(trainer, datasets["test"], schema)

    trained: Any = trainer.model
    adapter_dir: Path | None = None
    if config.method == "lora":
        adapter_dir = work_dir / "adapter"
        trained.save_pretrained(adapter_dir)
        trained = trained.merge_and_unload()
    trainable = sum(group.parameters for group in group_summaries)
    return FineTuneResult(
        model=trained,
        adapter_dir=adapter_dir,
        test_report=test_report,
        validation_report=validation_report,
        epochs=tuple(epochs),
        best_epoch=best_epoch,
        stopped_early=len(epochs) < config.epochs,
        train_seconds=train_seconds,
        train_samples_per_second=float(train_output.metrics["train_samples_per_second"]),
        trainable_parameters=trainable,
        total_parameters=sum(p.numel() for p in trained.parameters()),
        parameter_groups=tuple(group_summaries),
    )


def predict_probabilities(trainer: Trainer, dataset: TokenizedTexts) -> np.ndarray:
    logits = trainer.predict(dataset).predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    return softmax(np.asarray(logits, dtype=np.float64))


def _score(trainer: Trainer, dataset: TokenizedTexts, schema: LabelSchema) -> ClassificationReport:
    assert dataset.labels is not None
    return classification_report(predict_probabilities(trainer, dataset), dataset.labels, schema.names)


def _epoch_scores(trainer: Trainer) -> list[EpochScores]:
    """One row per finished epoch from the Trainer's log history (train loss and validation loss)."""
    train_loss: dict[int, float] = {}
    eval_loss: dict[int, float] = {}
    for entry in trainer.state.log_history:
        if "epoch" not in entry:
            continue
        epoch = round(float(entry["epoch"]))
        if "eval_loss" in entry:
            eval_loss[epoch] = float(entry["eval_loss"])
        elif "loss" in entry:
            train_loss[epoch] = float(entry["loss"])
    return [EpochScores(e, train_loss.get(e), eval_loss[e]) for e in sorted(eval_loss)]


def _best_epoch(trainer: Trainer, epochs: list[EpochScores]) -> int:
    best = trainer.state.best_metric
    if best is None or not epochs:
        raise RuntimeError("training finished without a validation loss; the best checkpoint is unknown")
    return min(epochs, key=lambda e: abs(e.eval_loss - best)).epoch
