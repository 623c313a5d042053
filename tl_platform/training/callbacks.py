"""Trainer callbacks that plug tracking in from outside the training code."""

from __future__ import annotations

from typing import Any

from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tl_platform.tracking.protocol import RunTracker


class TrackerCallback(TrainerCallback):
    """Forward every numeric value the Trainer logs (train loss, eval metrics per epoch) to a RunTracker.

    ``prefix`` keeps the metrics of two phases of one run apart (``head_warmup/`` and ``mlm/``, say).
    """

    def __init__(self, tracker: RunTracker, prefix: str = "") -> None:
        self.tracker = tracker
        self.prefix = prefix
        self.history: list[dict[str, float]] = []

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if not numeric:
            return
        self.history.append({**numeric, "step": float(state.global_step)})
        self.tracker.log_metrics({f"{self.prefix}{k}": v for k, v in numeric.items()}, step=state.global_step)
