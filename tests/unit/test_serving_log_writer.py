"""The group-commit writer when its thread dies: every waiting request fails at once (none answered unlogged),
readiness flips, new rows are refused while it restarts, and it restarts after a bounded back-off (or gives up
after too many deaths in a row); a commit that hangs past its deadline fails its requests and stalls the writer
until it returns; a caller that went away does not end it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.log_availability import UNAVAILABLE_MESSAGE, LogUnavailableError
from tl_platform.serving.log_writer import GroupCommitWriter, WriterRestartPolicy
from tl_platform.serving.prediction_log import SERVED, PredictionLog, PredictionRow

__all__ = ["serving_bundles"]
SECRET = "my private text 4711"


class WriterKilled(BaseException):
    """Not an Exception: escapes the commit's error handling and ends the writer thread."""


def row(request_id: str, index: int = 0) -> PredictionRow:
    return PredictionRow(
        request_id=request_id, item_index=index, role=SERVED, ts=datetime.now(UTC), unit_id=None, variant="champion",
        model_version="1", label="1", confidence=0.75, probabilities={"0": 0.25, "1": 0.75}, latency_ms=1.0,
        text_chars=5, token_count=2, unknown_share=0.0, truncated=False, projection=(0.5,), text="hello",
        experiment_id=None, routing_salt="s", challenger_share=0.0,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` held; fails the test past ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - started


class BlockThenDie:
    """A ``write`` whose first call blocks until released, then kills the thread; later calls go to ``then``."""

    def __init__(self, then: Callable[[list[dict[str, Any]]], None]) -> None:
        self.then = then
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(10)
            raise WriterKilled("boom in the writer")
        self.then(rows)


def failure(future: Future[None]) -> BaseException | None:
    return future.exception(timeout=10)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PredictionLog]:
    opened = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", writer_restart=WriterRestartPolicy(first_backoff_s=3.0))
    yield opened
    opened.close()


def test_a_dead_writer_fails_rows_in_hand_and_queued_then_restarts_after_its_back_off(
    log: PredictionLog, caplog: pytest.LogCaptureFixture
) -> None:
    write = BlockThenDie(log.writer.write)
    log.writer.write = write
    log.start()
    in_hand = log.submit([row("a" * 32)])
    assert write.entered.wait(10)
    queued = [log.submit([row("b" * 32)]), log.submit([row("c" * 32), row("c" * 32, 1)])]
    assert log.pending_rows == 3 and not any(f.done() for f in [in_hand, *queued])
    write.release.set()
    errors = [failure(f) for f in [in_hand, *queued]]
    died = time.monotonic()
    assert all(isinstance(e, LogUnavailableError) for e in errors), errors
    assert {str(e) for e in errors} == {"the prediction log's writer stopped unexpectedly"}
    assert all(isinstance(e.__cause__, WriterKilled) for e in errors if e is not None)
    assert (log.writer_alive, log.writer_state, log.pending_rows) == (False, "restarting", 0)
    refused = log.submit([row("d" * 32)])  # refused at once, not queued behind a thread that is not there
    assert refused.done() and str(refused.exception()) == "the prediction log's writer thread is not running"
    assert ("prediction log writer thread died (1 in a row): 3 waiting requests (4 rows) failed; restarting it in "
            "3 s") in caplog.text and "boom in the writer" in caplog.text

    wait_for(lambda: log.writer_alive)
    assert time.monotonic() - died >= 2.9  # the back-off held (3 s: the checks above fit in it on a loaded machine)
    assert (log.writer_state, log.writer.restarts) == ("running", 1)
    wait_for(lambda: "prediction log writer thread restarted (restart 1)" in caplog.text)  # logged once it runs
    log.submit([row("e" * 32)]).result(10)
    assert [r["request_id"] for r in log.rows()] == ["e" * 32]  # nothing of what failed was committed


def test_a_writer_dying_again_and_again_backs_off_then_gives_up_until_started(caplog: pytest.LogCaptureFixture) -> None:
    written: list[list[dict[str, Any]]] = []
    broken = True

    def write(rows: list[dict[str, Any]]) -> None:
        if broken:
            raise WriterKilled("still broken")
        written.append(rows)

    writer = GroupCommitWriter(write, restart=WriterRestartPolicy(first_backoff_s=0.05, max_backoff_s=0.08, max_restarts=2))
    writer.start()
    for _ in range(3):  # the first death and two restarts
        wait_for(lambda: writer.alive)
        assert isinstance(failure(writer.submit([{"n": 1}])), LogUnavailableError)
    assert "died (1 in a row): 1 waiting requests (1 rows) failed; restarting it in 0.05 s" in caplog.text
    assert "died (2 in a row): 1 waiting requests (1 rows) failed; restarting it in 0.08 s" in caplog.text
    time.sleep(0.3)  # past every back-off: no further restart
    assert (writer.state, writer.alive, writer.restarts) == ("failed", False, 2)
    assert ("died 3 times in a row (WriterRestartPolicy.max_restarts 2): 1 waiting requests (1 rows) failed; not "
            "restarting it") in caplog.text
    assert isinstance(writer.submit([{"n": 2}]).exception(0), LogUnavailableError)
    broken = False
    writer.start()  # an operator's (or a test's) explicit start revives it
    writer.submit([{"n": 3}]).result(10)
    assert written == [[{"n": 3}]] and writer.state == "running"
    writer.stop()
    assert writer.state == "idle"


def test_a_commit_resets_the_deaths_in_a_row(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = iter(["die", "ok", "die"])

    def write(rows: list[dict[str, Any]]) -> None:
        if next(outcomes) == "die":
            raise WriterKilled("again")

    writer = GroupCommitWriter(write, restart=WriterRestartPolicy(first_backoff_s=0.5, max_restarts=1))
    writer.start()
    for expected in (LogUnavailableError, None, LogUnavailableError):
        wait_for(lambda: writer.alive)
        error = failure(writer.submit([{"n": 1}]))
        assert (type(error) if error is not None else None) is expected
    assert writer.state == "restarting"  # a second death, but not in a row: a commit came between
    assert caplog.text.count("died (1 in a row)") == 2 and "in a row (WriterRestartPolicy" not in caplog.text
    writer.stop()
    assert writer.state == "idle"
    time.sleep(0.7)
    assert writer.state == "idle" and writer.thread is None  # stop cancelled the pending restart


def test_a_caller_that_cancelled_its_future_does_not_end_the_writer() -> None:
    written: list[list[dict[str, Any]]] = []
    writer = GroupCommitWriter(written.append)
    gone = writer.submit([{"n": 1}])
    assert gone.cancel()  # e.g. asyncio.wrap_future's waiter cancelled: the concurrent future is cancelled too
    waiting = writer.submit([{"n": 2}])
    writer.start()
    waiting.result(10)
    assert writer.alive and writer.commits == 1 and written == [[{"n": 1}, {"n": 2}]]
    writer.submit([{"n": 3}]).result(10)  # still running
    writer.stop()


def test_a_commit_past_its_deadline_fails_its_requests_and_stalls_the_writer_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backend that hangs (frozen, packets dropped) rather than refuses: no server-side timeout can fire."""
    written: list[list[dict[str, Any]]] = []
    entered, release = threading.Event(), threading.Event()

    def write(rows: list[dict[str, Any]]) -> None:
        if not written:
            entered.set()
            assert release.wait(10)
        written.append(rows)  # the hung commit lands after all

    writer = GroupCommitWriter(write, commit_deadline_s=0.3)
    writer.start()
    started = time.monotonic()
    in_hand = writer.submit([{"n": 1}])
    assert entered.wait(10)
    queued = writer.submit([{"n": 2}, {"n": 3}])
    errors = [failure(in_hand), failure(queued)]
    waited = time.monotonic() - started
    assert {str(e) for e in errors} == {"the prediction log did not confirm the commit in time"}
    assert 0.25 <= waited < 5
    assert (writer.state, writer.alive, writer.stalls, writer.pending_rows) == ("stalled", False, 1, 0)
    assert isinstance(writer.submit([{"n": 4}]).exception(0), LogUnavailableError)  # refused at once while stalled
    assert ("prediction log commit of 1 requests has run past its deadline of 0.3 s (the connect and statement "
            "timeouts): 2 waiting requests failed") in caplog.text
    release.set()
    wait_for(lambda: writer.alive)
    assert "returned after" in caplog.text and "the writer takes rows again" in caplog.text
    writer.submit([{"n": 5}]).result(10)
    assert written == [[{"n": 1}], [{"n": 5}]]  # a 503 for a row that landed, never a 200 for one that did not
    writer.stop()
    assert writer.state == "idle" and writer._watchdog is None


def test_the_log_derives_its_commit_deadline_from_its_timeouts(tmp_path: Path) -> None:
    timed = PredictionLog(f"sqlite:///{tmp_path / 'a.db'}", connect_timeout_s=2.0, statement_timeout_s=3.0)
    untimed = PredictionLog(f"sqlite:///{tmp_path / 'b.db'}")
    assert (timed.writer.commit_deadline_s, untimed.writer.commit_deadline_s) == (5.0, None)
    timed.close()
    untimed.close()
    with pytest.raises(ValueError, match="commit_deadline_s must be a positive number of seconds or None, got 0"):
        GroupCommitWriter(list.append, commit_deadline_s=0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"first_backoff_s": 0}, "WriterRestartPolicy.first_backoff_s must be in (0, 3600] seconds, got 0"),
    ({"first_backoff_s": 2.0, "max_backoff_s": 1.0}, "WriterRestartPolicy.max_backoff_s must be at least first_backoff_s (2), got 1.0"),
    ({"max_restarts": -1}, "WriterRestartPolicy.max_restarts must be an integer in [0, 1000], got -1"),
])
def test_restart_policy_validates_and_doubles_to_its_cap(changes: dict[str, Any], message: str) -> None:
    assert [WriterRestartPolicy().backoff_s(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    with pytest.raises(ValueError) as refused:
        WriterRestartPolicy(**changes)
    assert str(refused.value) == message


def test_over_http_waiting_requests_get_a_generic_503_readyz_flips_and_service_resumes(
    tmp_path: Path, serving_bundles: ServingBundles
) -> None:
    deployment = write_record(tmp_path / "deployment.json", serving_bundles.exported)
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600)
    with TestClient(create_app(config)) as client:
        log: PredictionLog = client.app.state.runtime.log  # type: ignore[attr-defined]
        write = BlockThenDie(log.writer.write)
        log.writer.write = write
        responses: dict[int, Any] = {}

        def predict(i: int) -> None:
            responses[i] = client.post("/predict", json={"text": f"{SECRET} {i}"})

        threads = [threading.Thread(target=predict, args=(0,))]
        threads[0].start()
        assert write.entered.wait(30)  # request 0's row is in the writer's hand
        threads += [threading.Thread(target=predict, args=(i,)) for i in (1, 2)]
        for thread in threads[1:]:
            thread.start()
        wait_for(lambda: log.pending_rows == 2, timeout=30)  # requests 1 and 2 queued behind it
        write.release.set()
        for thread in threads:
            thread.join(30)
        assert sorted(responses) == [0, 1, 2]
        for response in responses.values():
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert response.json()["error"] == UNAVAILABLE_MESSAGE and SECRET not in response.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["errors"][0]["rule"] == "writer_running"
        assert ready.json()["error"] == "prediction_log: the log writer is not running (restarting)"
        recovered = wait_for(lambda: client.get("/readyz").status_code == 200)
        answered = client.post("/predict", json={"text": "back again"})
        assert answered.status_code == 200
        assert [r["text"] for r in log.rows(SERVED)] == ["back again"]  # the failed ones were never logged
        assert recovered < 5
