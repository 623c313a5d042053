"""Dynamic batching with length buckets.

Request handlers submit one tokenised text at a time and get a Future. Worker threads take a batch from one
(model, length bucket) queue when it is full (``max_batch_size``) or when its oldest text has waited
``max_wait_ms``; texts of a batch share a bucket, so padding is bounded by the bucket's width. Each future gets
its own row of the model's output. Items carry their model, so a hot reload needs no draining: texts queued
for the old model are run on it, new texts on the new one.

Backpressure: the queue holds at most ``max_queued_texts``; a request whose texts do not all fit is refused
whole (``QueueFullError``) rather than queued without bound. A count of texts is no measure of time, though:
64 ten-thousand-character documents take a hundred times as long as 64 short sentences. So the batcher also
keeps the queued tokens and a moving average of the seconds a token costs, and refuses a request whose texts
would wait past its deadline behind the work already queued (``QueueTooSlowError``) instead of accepting work
it would abandon: measured with 120 concurrent requests of 64 long documents, 115 timed out after waiting
their whole deadline before this check. A text whose request gave up (its future cancelled) or whose
deadline passed before its batch ran is dropped from the batch, not computed.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The batching queue cannot take a request's texts now: the server is past its capacity."""


class QueueTooSlowError(QueueFullError):
    """The work queued ahead of a request would take it past its deadline: refused now, not abandoned later."""


class DeadlineExceededError(TimeoutError):
    """A text's request deadline passed before its batch ran; it was dropped unscored."""


class BatchModel(Protocol):
    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ItemOutput:
    """One text's logits and sentence embedding, and the size of the batch it ran in."""

    logits: np.ndarray
    embedding: np.ndarray
    batch_size: int


@dataclass(frozen=True)
class BatchStats:
    """What one model call looked like: texts, padded width, and their real token lengths."""

    size: int
    width: int
    lengths: tuple[int, ...]

    @property
    def padding_tokens(self) -> int:
        return self.size * self.width - sum(self.lengths)


@dataclass
class _Item:
    model: BatchModel
    token_ids: Sequence[int]
    future: Future[ItemOutput]
    deadline: float | None = None  # time.monotonic() after which the answer is no longer wanted
    enqueued: float = field(default_factory=time.monotonic)


BatchObserver = Callable[[BatchStats, float], None]  # (stats, seconds the model call took)


class DynamicBatcher:
    """Length-bucketed dynamic batching over ``workers`` threads.

    ``bucket_edges`` are upper token-length bounds; lengths above the last edge share the last bucket.
    ``on_batch`` is called after every model call (metrics); ``on_depth`` with the queue depth after each change;
    ``on_dropped`` with the number of texts dropped unscored (cancelled or past their deadline).
    """

    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        workers: int,
        bucket_edges: Sequence[int] = (),
        on_batch: BatchObserver | None = None,
        on_depth: Callable[[int], None] | None = None,
        max_queued_texts: int = 1024,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be at least 0, got {max_wait_ms}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_queued_texts < 1:
            raise ValueError(f"max_queued_texts must be at least 1, got {max_queued_texts}")
        self.max_queued_texts = max_queued_texts
        self._on_dropped = on_dropped
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.bucket_edges = tuple(bucket_edges)
        self._workers = workers
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queues: dict[tuple[int, int], deque[_Item]] = {}
        self._depth = 0
        self._queued_tokens = 0
        self._running_tokens = 0
        self._seconds_per_token: float | None = None  # moving average over model calls; None until the first
        self._condition = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def bucket_of(self, length: int) -> int:
        return min(bisect.bisect_left(self.bucket_edges, length), max(len(self.bucket_edges) - 1, 0))

    @property
    def depth(self) -> int:
        return self._depth

    def expected_wait_s(self, extra_tokens: int = 0) -> float | None:
        """Seconds the queued work (plus ``extra_tokens``) would keep the workers busy, at the measured cost of a
        token; None before any model call was measured."""
        with self._condition:
            return self._expected_wait_locked(extra_tokens)

    def refuse_if_too_slow(self, tokens: int, deadline: float | None) -> None:
        """QueueTooSlowError if ``tokens`` more would wait past ``deadline`` behind the queued and running work.

        Callers check a lower bound of a request's tokens before tokenising it, so a request refused anyway costs no
        tokenising; ``submit_many`` checks the real count. Never refuses while nothing is queued or running."""
        with self._condition:
            self._refuse_if_too_slow_locked(tokens, deadline)

    def _refuse_if_too_slow_locked(self, tokens: int, deadline: float | None) -> None:
        ahead = self._queued_tokens + self._running_tokens
        wait = self._expected_wait_locked(tokens)
        if deadline is not None and ahead and wait is not None and time.monotonic() + wait > deadline:
            raise QueueTooSlowError(
                f"batching queue: about {wait:.1f} s of work ({ahead} tokens queued or running, and this "
                f"request's {tokens}) would outlast this request's deadline"
            )

    def _expected_wait_locked(self, extra_tokens: int) -> float | None:
        if self._seconds_per_token is None:
            return None
        # the batches running now count too: a new request waits for them as well as for the queue
        return (self._running_tokens + self._queued_tokens + extra_tokens) * self._seconds_per_token / self._workers

    def start(self) -> None:
        with self._condition:
            if self._threads:
                return
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._work, name=f"tlp-batch-{i}", daemon=True) for i in range(self._workers)
            ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the workers."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def submit(self, model: BatchModel, token_ids: Sequence[int], deadline: float | None = None) -> Future[ItemOutput]:
        return self.submit_many(model, [token_ids], deadline)[0]

    def submit_many(
        self, model: BatchModel, texts: Sequence[Sequence[int]], deadline: float | None = None
    ) -> list[Future[ItemOutput]]:
        """Queue one request's texts, all or none: QueueFullError when they do not fit under ``max_queued_texts``.

        ``deadline`` (``time.monotonic()`` seconds): a text still queued after it is dropped with
        DeadlineExceededError instead of being scored; a request that would wait past it behind the queued work
        is refused with QueueTooSlowError (never when nothing is queued: alone, it gets its chance).
        """
        items = [_Item(model, ids, Future(), deadline) for ids in texts]
        tokens = sum(len(ids) for ids in texts)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            if self._depth + len(items) > self.max_queued_texts:
                raise QueueFullError(
                    f"batching queue: {self._depth} of {self.max_queued_texts} texts queued, no room for {len(items)} more"
                )
            self._refuse_if_too_slow_locked(tokens, deadline)
            for item in items:
                key = (id(model), self.bucket_of(len(item.token_ids)))
                self._queues.setdefault(key, deque()).append(item)
            self._depth += len(items)
            self._queued_tokens += tokens
            depth = self._depth
            self._condition.notify(len(items))
        if self._on_depth is not None:
            self._on_depth(depth)
        return [item.future for item in items]

    def _take(self) -> list[_Item] | None:
        """Block until a batch is due; None when stopping with nothing left."""
        with self._condition:
            while True:
                now = time.monotonic()
                due_key: tuple[int, int] | None = None
                due_since = float("inf")
                next_deadline = float("inf")
                for key, queue in self._queues.items():
                    oldest = queue[0].enqueued
                    if len(queue) >= self.max_batch_size or now - oldest >= self.max_wait or self._stopping:
                        if oldest < due_since:
                            due_key, due_since = key, oldest
                    else:
                        next_deadline = min(next_deadline, oldest + self.max_wait)
                if due_key is not None:
                    queue = self._queues[due_key]
                    batch = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
                    if not queue:
                        del self._queues[due_key]
                    self._depth -= len(batch)
                    taken = sum(len(item.token_ids) for item in batch)
                    self._queued_tokens -= taken
                    self._running_tokens += taken
                    if self._queues:
                        self._condition.notify()  # another batch may be due for another worker
                    return batch
                if self._stopping:
                    return None
                self._condition.wait(None if next_deadline == float("inf") else max(next_deadline - now, 0.0))

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if self._on_depth is not None:
                self._on_depth(self._depth)
            self._run(batch)

    def _observe_cost(self, seconds: float, tokens: int) -> None:
        cost = seconds / max(tokens, 1)
        with self._condition:  # a moving average: the cost follows load and text lengths within a few calls
            previous = self._seconds_per_token
            self._seconds_per_token = cost if previous is None else 0.8 * previous + 0.2 * cost

    def _live(self, batch: list[_Item]) -> list[_Item]:
        """The items still wanted: a cancelled future (its request gave up) or a passed deadline drops the text."""
        now = time.monotonic()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled by its request; marking it running also stops a later cancel racing the result
            if item.deadline is not None and now > item.deadline:
                item.future.set_exception(DeadlineExceededError("the request's deadline passed before its batch ran"))
                continue
            live.append(item)
        if len(live) < len(batch) and self._on_dropped is not None:
            self._on_dropped(len(batch) - len(live))
        return live

    def _run(self, batch: list[_Item]) -> None:
        tokens = sum(len(item.token_ids) for item in batch)
        try:
            self._run_live(self._live(batch))
        finally:
            with self._condition:
                self._running_tokens -= tokens

    def _run_live(self, batch: list[_Item]) -> None:
        if not batch:
            return
        token_ids = [item.token_ids for item in batch]
        started = time.perf_counter()
        try:
            logits, embeddings = batch[0].model.infer(token_ids)
        except Exception as err:  # handed to every waiting request, which answers 500 and counts it
            logger.exception("model call on a batch of %d failed", len(batch))
            for item in batch:
                item.future.set_exception(err)
            return
        seconds = time.perf_counter() - started
        self._observe_cost(seconds, sum(len(ids) for ids in token_ids))
        if logits.shape[0] != len(batch) or embeddings.shape[0] != len(batch):
            error = RuntimeError(f"model returned {logits.shape[0]} rows for a batch of {len(batch)}")
            for item in batch:
                item.future.set_exception(error)
            return
        for row, item in enumerate(batch):
            item.future.set_result(ItemOutput(logits[row], embeddings[row], len(batch)))
        if self._on_batch is not None:
            stats = BatchStats(len(batch), max(len(t) for t in token_ids), tuple(len(t) for t in token_ids))
            self._on_batch(stats, seconds)
