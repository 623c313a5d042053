"""Dynamic batching: batch size cap, max wait, length buckets, results routed back to the right futures."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from tl_platform.serving.batching import BatchStats, DynamicBatcher


class RecordingModel:
    """Logits row i = (first token id, length of sequence i); records every batch it was called with."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[tuple[int, ...]]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            self.batches.append([tuple(t) for t in token_ids])
        time.sleep(self.delay_s)
        logits = np.array([[t[0], len(t)] for t in token_ids], dtype=np.float64)
        return logits, np.zeros((len(token_ids), 3))


def _padding(batches: list[list[tuple[int, ...]]]) -> int:
    return sum(len(b) * max(len(t) for t in b) - sum(len(t) for t in b) for b in batches)


def test_batches_are_capped_and_fifo_and_each_future_gets_its_own_row() -> None:
    model = RecordingModel()
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(max_batch_size=4, max_wait_ms=1000, workers=1, on_batch=lambda s, _: stats.append(s))
    futures = [batcher.submit(model, (i, 0, 0)) for i in range(10)]  # queued before any worker runs
    batcher.start()
    results = [f.result(timeout=5) for f in futures]
    batcher.stop()
    assert [[t[0] for t in b] for b in model.batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [r.logits[0] for r in results] == list(range(10))
    assert [r.batch_size for r in results] == [4] * 8 + [2] * 2
    assert [s.size for s in stats] == [4, 4, 2]


def test_a_lone_text_waits_at_most_max_wait() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(max_batch_size=64, max_wait_ms=50, workers=1)
    batcher.start()
    started = time.perf_counter()
    result = batcher.submit(model, (7, 1)).result(timeout=5)
    waited = time.perf_counter() - started
    batcher.stop()
    assert result.batch_size == 1
    assert 0.045 <= waited < 0.5  # it waited for companions, then ran alone


def test_a_full_batch_does_not_wait() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(max_batch_size=4, max_wait_ms=1000, workers=1)
    batcher.start()
    started = time.perf_counter()
    futures = [batcher.submit(model, (i,)) for i in range(4)]
    [f.result(timeout=5) for f in futures]
    waited = time.perf_counter() - started
    batcher.stop()
    assert waited < 0.5  # far below the 1 s max wait
    assert len(model.batches) == 1 and len(model.batches[0]) == 4


def test_length_buckets_remove_padding() -> None:
    def run(edges: tuple[int, ...]) -> RecordingModel:
        model = RecordingModel()
        batcher = DynamicBatcher(max_batch_size=8, max_wait_ms=1000, workers=1, bucket_edges=edges)
        short, long = (1,) * 5, (2,) * 60
        futures = [batcher.submit(model, short if i % 2 else long) for i in range(16)]
        batcher.start()
        [f.result(timeout=5) for f in futures]
        batcher.stop()
        return model

    unbucketed, bucketed = run(()), run((16, 32, 64))
    assert _padding(unbucketed.batches) == 2 * 8 * 60 - (8 * 5 + 8 * 60) == 440
    assert _padding(bucketed.batches) == 0
    assert sorted(len(b) for b in bucketed.batches) == [8, 8]


def test_bucket_of_uses_upper_edges() -> None:
    batcher = DynamicBatcher(max_batch_size=2, max_wait_ms=1, workers=1, bucket_edges=(16, 32))
    assert [batcher.bucket_of(n) for n in (1, 16, 17, 32, 33, 500)] == [0, 0, 1, 1, 1, 1]
    assert DynamicBatcher(2, 1, 1).bucket_of(999) == 0


def test_texts_of_different_models_never_share_a_batch() -> None:
    a, b = RecordingModel(), RecordingModel()
    batcher = DynamicBatcher(max_batch_size=8, max_wait_ms=1000, workers=1)
    futures = [batcher.submit(a if i % 2 else b, (i,)) for i in range(8)]
    batcher.start()
    [f.result(timeout=5) for f in futures]
    batcher.stop()
    assert [[t[0] for t in batch] for batch in a.batches] == [[1, 3, 5, 7]]
    assert [[t[0] for t in batch] for batch in b.batches] == [[0, 2, 4, 6]]


def test_several_workers_run_batches_concurrently() -> None:
    model = RecordingModel(delay_s=0.2)
    batcher = DynamicBatcher(max_batch_size=1, max_wait_ms=0, workers=4)
    batcher.start()
    started = time.perf_counter()
    futures = [batcher.submit(model, (i,)) for i in range(4)]
    [f.result(timeout=5) for f in futures]
    elapsed = time.perf_counter() - started
    batcher.stop()
    assert elapsed < 0.6  # 4 x 0.2 s serially would take 0.8 s


def test_a_failing_model_fails_every_future_of_its_batch() -> None:
    class Broken:
        def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
            raise RuntimeError("onnx says no")

    batcher = DynamicBatcher(max_batch_size=2, max_wait_ms=1000, workers=1)
    futures = [batcher.submit(Broken(), (i,)) for i in range(2)]
    batcher.start()
    for future in futures:
        with pytest.raises(RuntimeError, match="onnx says no"):
            future.result(timeout=5)
    ok = batcher.submit(RecordingModel(), (5,)).result(timeout=5)  # the worker survived
    batcher.stop()
    assert ok.logits[0] == 5


def test_queue_depth_is_reported() -> None:
    depths: list[int] = []
    batcher = DynamicBatcher(max_batch_size=3, max_wait_ms=1000, workers=1, on_depth=depths.append)
    model = RecordingModel()
    futures = [batcher.submit(model, (i,)) for i in range(3)]
    assert depths == [1, 2, 3] and batcher.depth == 3
    batcher.start()
    [f.result(timeout=5) for f in futures]
    batcher.stop()
    assert depths[-1] == 0 and batcher.depth == 0


@pytest.mark.parametrize(("args", "message"), [((0, 1, 1), "max_batch_size must be at least 1, got 0"),
                                                ((1, -1, 1), "max_wait_ms must be at least 0, got -1"),
                                                ((1, 1, 0), "workers must be at least 1, got 0")])
def test_bad_settings_are_refused(args: tuple[int, float, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(*args)
