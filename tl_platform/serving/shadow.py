"""Shadow scoring: the challenger scores a request silently, after the caller has its answer.

Jobs go to a bounded queue served by their own threads (never the batch workers), so a slow or failing
challenger cannot delay or break a reply. A full queue drops the job and counts it; a failure is counted and
logged with its traceback, and its log row carries the error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from tl_platform.serving.model import ServingModel
from tl_platform.serving.routing import RoutingContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    unit_id: str | None
    texts: tuple[str, ...]
    truncated: tuple[bool, ...]
    challenger: ServingModel
    routing: RoutingContext  # the deployment's when the request was served, logged on the shadow rows too
    enqueued: float
    attributes: Mapping[str, str] | None = None  # the request's slices, logged on the shadow rows too
    event_time: datetime | None = None  # the request's X-Event-Time; None: the shadow rows are timed when scored


@dataclass(frozen=True)
class ShadowCounts:
    ok: int
    failed: int
    dropped: int


class ShadowScorer:
    """Run ``score(job)`` for each submitted job on ``workers`` threads; drop when ``queue_size`` are waiting."""

    def __init__(
        self,
        score: Callable[[ShadowJob], None],
        workers: int,
        queue_size: int,
        on_outcome: Callable[[str, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._score = score
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self._workers = workers
        self._on_outcome = on_outcome
        self._on_depth = on_depth
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.dropped = 0

    def counts(self) -> ShadowCounts:
        with self._lock:
            return ShadowCounts(self.ok, self.failed, self.dropped)

    def start(self) -> None:
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._work, name=f"tlp-shadow-{i}", daemon=True) for i in range(self._workers)
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def submit(self, job: ShadowJob) -> bool:
        """Queue a job without blocking; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            logger.warning("shadow queue full; dropped the shadow scoring of request %s", job.request_id)
            self._outcome("dropped", 0.0)
            return False
        self._depth()
        return True

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._depth()
            started = time.perf_counter()
            try:
                self._score(job)
            except Exception:  # counted and logged with its traceback; the caller already has the champion's answer
                with self._lock:
                    self.failed += 1
                logger.exception("shadow scoring of request %s failed", job.request_id)
                self._outcome("failed", time.perf_counter() - started)
                continue
            with self._lock:
                self.ok += 1
            self._outcome("ok", time.perf_counter() - started)

    def _outcome(self, outcome: str, seconds: float) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome, seconds)

    def _depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self._queue.qsize())
