"""`tlp plan --compare`: train the plan's recommended recipe and its runner-up back to back, print them side by side.

The comparison itself is ``tl_platform.economics.comparison``; this module binds it to the terminal (a line per
candidate and per epoch) and to MLflow (a parent run "plan comparison" with one child run per candidate).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tl_platform.local_state import default_tracking_uri, tlp_home

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tl_platform.data.splits import DatasetSplits
    from tl_platform.economics.decision import TransferPlan
    from tl_platform.tracking.protocol import RunTracker

PARENT_RUN_NAME = "plan comparison"


class EpochLines(logging.Handler):
    """One line per finished epoch of whatever training reports on the ``tl_platform.progress`` logger."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.seen: set[tuple[str, int]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "tlp_progress", None)
        if not isinstance(fields, dict):
            return
        epoch = float(fields.get("epoch", 0.0))
        whole = round(epoch)
        key = (str(fields.get("phase", "training")), whole)
        if whole < 1 or abs(epoch - whole) > 1e-6 or key in self.seen:
            return  # mid-epoch steps, and the step report that ends an epoch besides the epoch's own
        self.seen.add(key)
        self.stream.write(f"  {key[0]}: epoch {whole}/{fields.get('epochs', 0):g}\n")
        self.stream.flush()


class WithoutTrainerLogs(io.TextIOBase):
    """Passes lines through to ``stream`` except the log dicts the Trainer prints when its progress bars are off
    (``{'loss': ...}``): the epoch lines say the same, readably."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not (line.startswith("{'") and line.endswith("}")):
                self.stream.write(line + "\n")
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def epoch_lines(stream: TextIO) -> Iterator[EpochLines]:
    logger = logging.getLogger("tl_platform.progress")
    handler = EpochLines(stream)
    logger.addHandler(handler)
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


def run_comparison(
    args: argparse.Namespace, plan: TransferPlan, splits: DatasetSplits, model_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> int:
    """Train both candidates, log them to MLflow, print the table and the parent run; 1 with a message on bad input."""
    from tl_platform.economics.comparison import (
        ComparisonError,
        budget_for,
        check_candidates,
        compare_plan,
        log_comparison,
    )
    from tl_platform.economics.documents import comparison_document
    from tl_platform.economics.render import to_markdown
    from tl_platform.tracking.mlflow_tracker import MlflowSettings, start_tracked_run

    try:
        check_candidates(plan.recommended, plan.runner_up)
        budget = budget_for(plan, epochs=args.compare_epochs, latency_requests=args.compare_latency_requests,
                            seed=args.compare_seed)
    except (ComparisonError, ValueError) as err:
        print(f"tlp: cannot compare: {err}", file=sys.stderr)
        return 1
    settings = MlflowSettings(default_tracking_uri(tlp_home()), args.experiment)

    def child_run(name: str, tags: dict[str, str]) -> AbstractContextManager[RunTracker]:
        return start_tracked_run(settings, name, tags, nested=True)

    out = sys.stdout
    print(f"\ntlp: comparing {plan.recommended.label} with {plan.runner_up.label} on {len(splits.train)} training, "
          f"{len(splits.validation)} validation and {len(splits.test)} test texts", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="tlp-compare-") as work,
        epoch_lines(out) as lines,
        redirect_stdout(WithoutTrainerLogs(out)),
        start_tracked_run(settings, PARENT_RUN_NAME, {"tlp.comparison": "parent"}) as parent,
    ):
        def announce(text: str) -> None:
            lines.seen.clear()
            print(text, flush=True)

        comparison = compare_plan(plan, splits, model_dir, tokenizer, budget, Path(work), child_run, announce)
        log_comparison(parent, comparison)
        run_id = parent.run_id
    print()
    print(to_markdown(comparison_document(comparison.to_json())))
    print(f"tlp: MLflow run {PARENT_RUN_NAME!r} {run_id} (experiment {args.experiment!r} at {settings.tracking_uri}), "
          "one child run per candidate: select both in `tlp mlflow-ui` and press Compare")
    return 0
