"""What the main command shows while it works: a line per stage with its time, bars for days and epochs.

On a terminal a bar redraws in place; in a log or a pipe (CI) it prints a line at each tenth instead, so a
captured run reads as a short account, not thousands of carriage returns. Training reports its epochs through
the ``tl_platform.progress`` logger (``training.callbacks.ProgressLogCallback``); ``TrainingProgressHandler``
turns those records into a bar, so training code never knows who is watching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

PROGRESS_LOGGER = "tl_platform.progress"
BAR_WIDTH = 28


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Stage lines and bars on one text stream (the terminal the user started the command from)."""

    def __init__(self, stream: TextIO, interactive: bool | None = None) -> None:
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self._bar_open = False
        self._last_tenth: dict[str, int] = {}
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        self._close_bar()
        self.stream.write(text + "\n")
        self.stream.flush()

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        """``▸ name`` when it starts, ``✓ name  (time)`` when it ends, ``✗`` with the time when it raises."""
        self.line(f"▸ {name}" + (f": {detail}" if detail else ""))
        began = time.monotonic()
        try:
            yield
        except BaseException:
            self.line(f"✗ {name} stopped after {format_duration(time.monotonic() - began)}")
            raise
        self.line(f"✓ {name}  ({format_duration(time.monotonic() - began)})")

    def bar(self, label: str, done: int, total: int, began: float, note: str = "") -> None:
        """A bar with the share done and the time left at the pace so far."""
        total = max(total, 1)
        share = min(done / total, 1.0)
        elapsed = time.monotonic() - began
        # too early a guess is wild: the time left shows from a twentieth done
        left = f"~{format_duration(elapsed / share - elapsed)} left" if share >= 0.05 else "estimating time left"
        filled = round(share * BAR_WIDTH)
        text = (f"  {label} [{'█' * filled}{'·' * (BAR_WIDTH - filled)}] {done}/{total}"
                f"  {format_duration(elapsed)} elapsed, {left}" + (f"  {note}" if note else ""))
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self._bar_open = True
            if done >= total:
                self._close_bar()
            return
        tenth = int(share * 10)
        if self._last_tenth.get(label, -1) < tenth:  # a line at each tenth in a log
            self._last_tenth[label] = tenth
            self.stream.write(text + "\n")
            self.stream.flush()
        if done >= total:
            self._last_tenth.pop(label, None)

    def _close_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False


class TrainingProgressHandler(logging.Handler):
    """Draws the epochs and steps that ``ProgressLogCallback`` reports as a bar on a ``Progress``."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self._began: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "tlp_progress", None)
        if not isinstance(fields, dict):
            return
        label = f"{fields.get('phase', 'training')}"
        began = self._began.setdefault(label, time.monotonic())
        step, steps = int(fields.get("step", 0)), int(fields.get("steps", 0))
        note = f"epoch {fields.get('epoch', 0):.1f}/{fields.get('epochs', 0)}"
        self.progress.bar(label, step, steps, began, note)
        if steps and step >= steps:
            self._began.pop(label, None)


@contextmanager
def training_bars(progress: Progress) -> Iterator[None]:
    """Show training progress on ``progress`` while the block runs."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    handler = TrainingProgressHandler(progress)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    previous, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous
