"""Trainer callbacks that plug tracking in from outside the training code."""

from __future__ import annotations

import logging
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


class ProgressLogCallback(TrainerCallback):
    """Report steps and epochs on the ``tl_platform.progress`` logger, for whoever shows progress (``tlp run``).

    A record every ``every`` steps and at each epoch's end; nobody listening costs one logger call.
    """

    def __init__(self, phase: str, every: int = 5) -> None:
        self.phase = phase
        self.every = max(1, every)
        self.logger = logging.getLogger("tl_platform.progress")

    def _report(self, args: TrainingArguments, state: TrainerState) -> None:
        self.logger.info(
            "%s: step %d of %d", self.phase, state.global_step, state.max_steps,
            extra={"tlp_progress": {"phase": self.phase, "step": state.global_step, "steps": state.max_steps,
                                    "epoch": float(state.epoch or 0.0), "epochs": args.num_train_epochs}},
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self._report(args, state)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._report(args, state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            return  # the last epoch's report already closed the bar
        # early stopping ends before max_steps: close the bar at what was done
        self.logger.info("%s: done", self.phase, extra={"tlp_progress": {
            "phase": self.phase, "step": state.global_step, "steps": state.global_step,
            "epoch": float(state.epoch or 0.0), "epochs": args.num_train_epochs}})
