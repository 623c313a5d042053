"""Text retention: logged texts older than the retention period are set to NULL, features kept.

The server runs one purge as it starts and then one every interval, on its own thread: never on the event
loop, and in short transactions (``PredictionLog.purge_texts``) so the group-commit writer is not held up. A
failed purge (the database away) is logged and counted, and the next interval tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tl_platform.serving.prediction_log import PredictionLog

logger = logging.getLogger(__name__)


class TextRetention:
    """Purge texts older than ``retention_days`` now, then every ``interval_s``, until stopped."""

    def __init__(
        self,
        log: PredictionLog,
        retention_days: int,
        interval_s: float,
        on_purge: Callable[[int | None], None] | None = None,  # rows purged, or None for a failed purge
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if retention_days < 1:
            raise ValueError(f"retention_days must be at least 1, got {retention_days}")
        self.log = log
        self.retention = timedelta(days=retention_days)
        self.interval_s = interval_s
        self._on_purge = on_purge
        self._now = now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.purged = 0
        self.runs = 0

    def purge_once(self) -> int:
        """Purge texts logged before now minus the retention; the number of rows whose text was removed."""
        cutoff = self._now() - self.retention
        purged = self.log.purge_texts(cutoff)
        self.purged += purged
        self.runs += 1
        if purged:
            logger.info("text retention: removed the text of %d log rows logged before %s", purged, cutoff.isoformat())
        return purged

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tlp-text-retention", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                purged: int | None = self.purge_once()
            except Exception:  # the server keeps serving; the texts go at the next interval
                purged = None
                logger.exception("text retention: purging logged texts failed; retrying in %.0f s", self.interval_s)
            if self._on_purge is not None:
                self._on_purge(purged)
            if self._stop.wait(self.interval_s):
                return
