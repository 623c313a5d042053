"""Backpressure: bounded batching and log queues, the in-flight limit, the request deadline, tokenising off the
event loop with a character bound, the shed-load metrics, and the settings that control them."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.data import load_labelled_text
from tl_platform.data.bundled import bundled_source
from tl_platform.serving.app import create_app
from tl_platform.serving.batching import DeadlineExceededError, DynamicBatcher, QueueFullError, QueueTooSlowError
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.model import (
    CHARS_PER_TOKEN_BOUND,
    ServingModel,
    TokenizedText,
    fewest_tokens,
    load_variant,
    word_prefix,
)
from tl_platform.serving.prediction_log import LogBacklogError, PredictionLog, PredictionRow
from tl_platform.serving.server import add_serve_arguments, config_from_args

__all__ = ["serving_bundles"]


class Recording:
    """Records each batch it is called with."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, ...]]] = []

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append([tuple(ids) for ids in token_ids])
        return np.zeros((len(token_ids), 2)), np.zeros((len(token_ids), 4))


def test_a_full_batching_queue_refuses_the_whole_request_and_queues_nothing() -> None:
    batcher = DynamicBatcher(max_batch_size=8, max_wait_ms=1000, workers=1, max_queued_texts=5)
    model = Recording()
    batcher.submit_many(model, [(1,), (2,), (3,)])
    with pytest.raises(QueueFullError, match=r"batching queue: 3 of 5 texts queued, no room for 3 more"):
        batcher.submit_many(model, [(4,), (5,), (6,)])
    assert batcher.depth == 3
    batcher.submit_many(model, [(4,), (5,)])  # what fits is taken
    assert batcher.depth == 5
    with pytest.raises(ValueError, match="max_queued_texts must be at least 1, got 0"):
        DynamicBatcher(max_batch_size=1, max_wait_ms=0, workers=1, max_queued_texts=0)


def test_cancelled_and_expired_texts_are_dropped_unscored() -> None:
    dropped: list[int] = []
    batcher = DynamicBatcher(max_batch_size=8, max_wait_ms=1000, workers=1, on_dropped=dropped.append)
    model = Recording()
    cancelled = batcher.submit(model, (1,))
    expired = batcher.submit(model, (2,), deadline=time.monotonic() - 1)
    kept = batcher.submit(model, (3,), deadline=time.monotonic() + 60)
    assert cancelled.cancel()
    batcher.start()
    batcher.stop()  # runs what is queued
    assert model.calls == [[(3,)]]
    assert kept.result(1).batch_size == 1
    with pytest.raises(DeadlineExceededError, match="deadline passed before its batch ran"):
        expired.result(1)
    assert dropped == [2]


class PerToken(Recording):
    """Takes a millisecond per token of every batch, as a model's cost grows with its input."""

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(sum(len(ids) for ids in token_ids) / 1000)
        return super().infer(token_ids)


def test_a_request_that_would_wait_past_its_deadline_behind_queued_work_is_refused_at_once() -> None:
    batcher = DynamicBatcher(max_batch_size=64, max_wait_ms=30_000, workers=1)
    model = PerToken()
    assert batcher.expected_wait_s() is None  # nothing measured yet: nothing refused on a guess
    batcher.start()
    try:
        for future in batcher.submit_many(model, [tuple(range(10))] * 64):  # a full batch runs at once: 640 ms
            future.result(10)
        wait = batcher.expected_wait_s(1000)
        assert wait is not None and 0.8 < wait < 3.0  # 1000 tokens at about a millisecond each
        queued = batcher.submit_many(model, [tuple(range(100))] * 10)  # 1,000 tokens wait for their batch
        with pytest.raises(QueueTooSlowError, match=r"about \d+\.\d s of work \(1000 tokens queued or running, and this request's 500\)"):
            batcher.submit_many(model, [tuple(range(100))] * 5, deadline=time.monotonic() + 0.5)
        assert batcher.depth == 10  # refused whole
        accepted = batcher.submit_many(model, [tuple(range(100))] * 5, deadline=time.monotonic() + 60)
        no_deadline = batcher.submit_many(model, [tuple(range(100))])
    finally:
        batcher.stop()
    assert all(future.result(10).batch_size == 16 for future in queued + accepted + no_deadline)
    # alone in the queue a request gets its chance, however long its own texts
    alone = DynamicBatcher(max_batch_size=64, max_wait_ms=0, workers=1)
    alone._observe_cost(1.0, 1)  # a second a token: any request's own work would outlast its deadline
    alone.start()
    try:
        assert alone.submit(model, (1, 2), deadline=time.monotonic() + 5).result(10).batch_size == 1
    finally:
        alone.stop()


def _row(i: int) -> PredictionRow:
    return PredictionRow(
        request_id=f"r{i}", item_index=0, role="served", ts=datetime.now(UTC), unit_id=None, variant="champion",
        model_version="1", label="1", confidence=0.9, probabilities={"0": 0.1, "1": 0.9}, latency_ms=1.0,
        text_chars=4, token_count=3, unknown_share=0.0, truncated=False, projection=(), text="text",
        experiment_id=None, routing_salt="s", challenger_share=0.0,
    )


def test_the_log_refuses_rows_past_its_pending_bound_and_frees_room_as_it_commits(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", max_pending_rows=3)
    try:
        waiting = [log.submit([_row(0), _row(1)])]  # no writer yet: the rows wait
        refused = log.submit([_row(2), _row(3)])
        with pytest.raises(LogBacklogError, match=r"2 of 3 rows wait for a commit, no room for 2 more"):
            refused.result(1)
        waiting.append(log.submit([_row(4)]))
        assert log.pending_rows == 3
        log.start()
        for future in waiting:
            future.result(5)
        assert log.pending_rows == 0
        log.submit([_row(5), _row(6), _row(7)]).result(5)  # room again
        assert sorted(r["request_id"] for r in log.rows()) == ["r0", "r1", "r4", "r5", "r6", "r7"]
    finally:
        log.close()
    with pytest.raises(ValueError, match="max_pending_rows must be at least 1, got 0"):
        PredictionLog(f"sqlite:///{tmp_path / 'other.db'}", max_pending_rows=0)


class SlowModel:
    """Sleeps before every model call; records the thread each tokenize call ran on."""

    def __init__(self, inner: ServingModel, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.version, self.precision, self.max_length = inner.version, inner.precision, inner.max_length
        self.labels, self.label_names = inner.labels, inner.label_names
        self.tokenize_threads: list[str] = []

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        self.tokenize_threads.append(threading.current_thread().name)
        return self.inner.tokenize(texts)

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.seconds)
        return self.inner.infer(token_ids)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return self.inner.project(embeddings)


def _app(tmp_path: Path, bundles: ServingBundles, seconds: float, **changes: object) -> tuple[TestClient, list[SlowModel]]:
    deployment = write_record(tmp_path / "deployment.json", bundles.exported)
    loaded: list[SlowModel] = []

    def loader(spec: VariantSpec, threads: int) -> ServingModel:
        loaded.append(SlowModel(load_variant(spec, threads), seconds))
        return loaded[-1]

    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600,
                           **changes)  # type: ignore[arg-type]
    return TestClient(create_app(config, loader)), loaded


def _shed(client: TestClient, reason: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'tlp_requests_shed_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no tlp_requests_shed_total for {reason}")


def test_past_max_in_flight_a_request_gets_429_with_retry_after_at_once(
    tmp_path: Path, serving_bundles: ServingBundles
) -> None:
    client, _ = _app(tmp_path, serving_bundles, 0.5, max_in_flight=1)
    with client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/predict", json={"text": "slow one"})
        time.sleep(0.2)  # the first is in its model call
        started = time.perf_counter()
        refused = client.post("/predict", json={"text": "one too many"})
        refused_s = time.perf_counter() - started
        assert first.result().status_code == 200
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused_s < 0.25  # refused at once, not after the first finished
        assert refused.json()["errors"][0] == {
            "field": "request", "rule": "max_in_flight",
            "message": "request: the server is at its limit of 1 requests in flight; retry after 1 s"}
        assert _shed(client, "in_flight") == 1 and _shed(client, "deadline") == 0
        assert client.post("/predict", json={"text": "room again"}).status_code == 200


def test_past_its_deadline_a_request_gets_503_and_its_queued_texts_are_dropped(
    tmp_path: Path, serving_bundles: ServingBundles
) -> None:
    client, _ = _app(tmp_path, serving_bundles, 0.4, request_timeout_s=0.2, batch_workers=1, max_batch_size=1,
                     max_wait_ms=0)
    with client:
        started = time.perf_counter()
        response = client.post("/predict", json={"texts": ["first", "second", "third"]})
        elapsed = time.perf_counter() - started
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["errors"][0]["rule"] == "request_timeout"
        assert "not answered within its deadline of 0.2 s (request_timeout_s)" in response.json()["error"]
        assert elapsed < 0.35  # answered at the deadline, not after the model calls
        assert _shed(client, "deadline") == 1
        time.sleep(0.6)  # the running call ends; the two texts still queued are dropped, not scored
        dropped = [line for line in client.get("/metrics").text.splitlines() if line.startswith("tlp_texts_dropped_total")]
        assert dropped == ["tlp_texts_dropped_total 2.0"]
        assert client.app.state.runtime.log.rows() == []  # type: ignore[attr-defined]  # nothing logged for it


def test_a_full_batching_queue_over_http_is_429(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    client, _ = _app(tmp_path, serving_bundles, 0.5, max_queued_texts=4, max_texts_per_request=4, batch_workers=1,
                     max_batch_size=1, max_wait_ms=0)
    with client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/predict", json={"texts": ["a", "b", "c"]})
        time.sleep(0.2)  # one text in the model, two queued
        refused = client.post("/predict", json={"texts": ["d", "e", "f"]})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["errors"][0]["rule"] == "max_queued_texts"
        assert "2 of 4 texts queued, no room for 3 more" in refused.json()["error"]
        assert first.result().status_code == 200
        assert _shed(client, "queue_full") == 1


def test_a_request_that_would_outwait_its_deadline_over_http_is_429(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    client, loaded = _app(tmp_path, serving_bundles, 0.3, request_timeout_s=2.0, batch_workers=1, max_batch_size=1,
                          max_wait_ms=0)
    with client, ThreadPoolExecutor(1) as pool:
        assert client.post("/predict", json={"text": "a"}).status_code == 200  # measures a token's cost
        first = pool.submit(client.post, "/predict", json={"texts": ["a", "b", "c", "d"]})  # 1.2 s of calls
        time.sleep(0.1)
        tokenised = len(loaded[0].tokenize_threads)
        started = time.perf_counter()
        refused = client.post("/predict", json={"texts": ["e", "f", "g", "h", "i", "j", "k", "l"]})
        assert time.perf_counter() - started < 0.25  # refused at once, not after waiting its deadline out
        assert len(loaded[0].tokenize_threads) == tokenised  # on a lower bound of its tokens, before tokenising
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["errors"][0]["rule"] == "queue_time"
        assert "would outlast this request's deadline" in refused.json()["error"]
        assert first.result().status_code == 200
        assert _shed(client, "queue_time") == 1


def test_the_token_count_checked_before_tokenising_never_exceeds_the_real_one(serving_bundles: ServingBundles) -> None:
    model = load_variant(VariantSpec("1", serving_bundles.exported, "fp32"))  # type: ignore[arg-type]
    bundled = load_labelled_text(bundled_source("amazon")).texts[:300]
    texts = [*bundled, "x" * 10_000, "word " * 2_000, "naïve café ☕ " * 500, "a", "!!! ... ???", "日本語のテキスト" * 50]
    real = [len(token.input_ids) for token in model.tokenize(texts)]
    assert all(fewest_tokens([text], model.max_length) <= count for text, count in zip(texts, real, strict=True))
    assert fewest_tokens(texts, model.max_length) <= sum(real)


def test_long_requests_are_tokenised_off_the_event_loop(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    client, loaded = _app(tmp_path, serving_bundles, 0.0)
    with client:
        assert client.post("/predict", json={"text": "short"}).status_code == 200
        assert client.post("/predict", json={"texts": ["long words " * 300] * 2}).status_code == 200
    short, long = loaded[0].tokenize_threads
    assert not short.startswith("tlp-tokenize")  # a short request: inline, cheaper than the hop
    assert long.startswith("tlp-tokenize")


def test_a_long_text_is_cut_at_a_word_break_and_keeps_the_whole_texts_ids(serving_bundles: ServingBundles) -> None:
    from transformers import AutoTokenizer

    from tl_platform.serving.model import ServingTokenizer

    assert word_prefix("short text", 100) is None
    assert word_prefix("aaaa bbbb cccc", 11) == "aaaa bbbb"  # before the space at or below the bound
    assert word_prefix("x" * 50, 10) is None  # no word break: tokenised whole
    tokenizer = AutoTokenizer.from_pretrained(serving_bundles.exported / "tokenizer")
    served = ServingTokenizer(tokenizer, 64)
    assert served.max_chars == 64 * CHARS_PER_TOKEN_BOUND
    texts = ["the phone works well. " * 500,  # 11,000 characters: cut to 1,024
             "a" + " " * 5000 + "b c d",  # the cut leaves too few tokens: tokenised whole
             "word" * 3000, "ünï cödé " * 1200]
    assert len(word_prefix(texts[0], 1024) or "") <= 1024
    ids = served(texts)
    expected = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    assert [list(t.input_ids) for t in ids] == expected
    assert [t.chars for t in ids] == [len(text) for text in texts]  # the feature is the whole text's length


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_in_flight": 0}, "ServingConfig.max_in_flight must be an integer in [1, 100000], got 0"),
        ({"max_queued_texts": 10}, "ServingConfig.max_queued_texts must be at least max_texts_per_request (64), got 10"),
        ({"max_pending_log_rows": 0}, "ServingConfig.max_pending_log_rows must be an integer in [1, 10000000], got 0"),
        ({"request_timeout_s": 0}, "ServingConfig.request_timeout_s must be a number of seconds in [0.01, 600], got 0"),
        ({"request_timeout_s": True}, "ServingConfig.request_timeout_s must be a number of seconds in [0.01, 600], got True"),
    ],
)
def test_backpressure_settings_are_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        ServingConfig(deployment=Path("d.json"), **changes)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_backpressure_flags_reach_the_config() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args([
        "--deployment", "d.json", "--max-in-flight", "8", "--max-queued-texts", "128", "--max-pending-log-rows", "500",
        "--request-timeout-s", "2.5"]))
    assert (config.max_in_flight, config.max_queued_texts, config.max_pending_log_rows, config.request_timeout_s) == (
        8, 128, 500, 2.5)
    defaults = config_from_args(parser.parse_args(["--deployment", "d.json"]))
    assert (defaults.max_in_flight, defaults.max_queued_texts, defaults.max_pending_log_rows,
            defaults.request_timeout_s) == (64, 4096, 100_000, 10.0)


