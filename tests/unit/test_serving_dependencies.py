"""Serving with failing dependencies: the log down (a generic 503, details only in the server's log), readiness
that reflects the log, the watcher and the models, start-up waiting for the log with a bounded back-off, the log
engine's timeouts, and a broken challenger at start that leaves the champion serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.serving_fixtures import POSTGRES_URL, ServingBundles, postgres_reason, serving_bundles, write_record
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.log_availability import UNAVAILABLE_MESSAGE, LogUnavailableError, open_with_retry
from tl_platform.serving.model import ServingModel, load_variant
from tl_platform.serving.prediction_log import SERVED, PredictionLog
from tl_platform.serving.server import main

__all__ = ["serving_bundles"]
SECRET = "my private text 4711"


def config(tmp_path: Path, deployment: Path, **changes: object) -> ServingConfig:
    return ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600,
                         **changes)  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path, serving_bundles: ServingBundles) -> Iterator[TestClient]:
    deployment = write_record(tmp_path / "deployment.json", serving_bundles.exported)
    with TestClient(create_app(config(tmp_path, deployment))) as test_client:
        yield test_client


def test_a_failing_log_commit_is_a_generic_503_with_the_cause_in_the_server_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    log: PredictionLog = client.app.state.runtime.log  # type: ignore[attr-defined]
    with log.engine.begin() as connection:  # the table gone: the INSERT fails, its message quoting the rows
        connection.execute(sa.text("ALTER TABLE predictions RENAME TO predictions_away"))
    response = client.post("/predict", json={"text": SECRET})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {"error": UNAVAILABLE_MESSAGE, "errors_omitted": 0, "errors": [
        {"field": "prediction_log", "rule": "log_available", "message": UNAVAILABLE_MESSAGE}]}
    assert SECRET not in response.text and "INSERT" not in response.text
    assert "group commit of 1 rows failed" in caplog.text and "no such table: predictions" in caplog.text
    with log.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE predictions_away RENAME TO predictions"))
    answered = client.post("/predict", json={"text": "back again"})
    assert answered.status_code == 200  # recovered: the writer went on
    assert [r["text"] for r in log.rows(SERVED)] == ["back again"]


def test_feedback_while_the_log_fails_is_a_generic_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    log: PredictionLog = client.app.state.runtime.log  # type: ignore[attr-defined]

    def down(*args: object) -> None:
        raise sa.exc.OperationalError("SELECT probabilities WHERE request_id = %(id)s", {"id": "x"}, Exception("server closed"))

    monkeypatch.setattr(log, "record_feedback", down)
    response = client.post("/feedback", json={"request_id": "0" * 32, "label": "1"})
    assert response.status_code == 503 and response.json()["error"] == UNAVAILABLE_MESSAGE
    assert "SELECT" not in response.text


def test_readyz_reflects_the_log_the_watcher_and_the_models(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 200

    def unreachable() -> None:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(runtime.log, "ping", unreachable)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["errors"][0]["field"] == "prediction_log"
    assert "connection refused" not in response.text
    monkeypatch.undo()
    assert client.get("/readyz").status_code == 200
    runtime.watcher.stop()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["error"].startswith("deployment_watcher: not running")
    runtime.watcher.start()
    assert client.get("/readyz").status_code == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's death, on purpose
def test_a_dead_writer_fails_requests_at_once_instead_of_hanging(client: TestClient) -> None:
    log: PredictionLog = client.app.state.runtime.log  # type: ignore[attr-defined]
    writer = log._writer
    log._pending.put(object())  # not a (rows, future) entry: the writer thread dies on it
    assert writer is not None
    writer.join(5)
    assert not log.writer_alive
    started = time.perf_counter()
    response = client.post("/predict", json={"text": "anyone there"})
    assert response.status_code == 503 and time.perf_counter() - started < 2
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["errors"][0]["rule"] == "writer_running"


def test_start_up_retries_the_log_with_bounded_back_off() -> None:
    pauses: list[float] = []
    attempts = 0

    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 5:
            raise sa.exc.OperationalError("connect", {}, Exception("connection refused"))
        return "log"

    assert open_with_retry(flaky, 60, "postgresql://db/x", sleep=pauses.append) == "log"
    assert pauses == [0.5, 1.0, 2.0, 4.0]
    clock = iter(range(0, 1000, 3))  # each attempt takes 3 s

    def never() -> str:
        raise sa.exc.OperationalError("connect", {}, Exception("connection refused"))

    with pytest.raises(LogUnavailableError, match=r"postgresql://db/x: not reachable after 4 attempts over 10 s "
                       r"\(ServingConfig.log_start_wait_s\); last error: connection refused"):
        open_with_retry(never, 10, "postgresql://db/x", sleep=lambda s: None, clock=lambda: float(next(clock)))

    def stale() -> str:
        raise ValueError("schema at 0002, expected head 0003")

    with pytest.raises(ValueError, match="0002"):  # not a connection problem: waiting would not fix it
        open_with_retry(stale, 60, "x", sleep=pauses.append)


def test_serve_exits_with_a_message_when_the_log_stays_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = tmp_path / "deployment.json"  # never read: the log is opened first
    started = time.perf_counter()
    code = main(["--deployment", str(deployment), "--log-url", "postgresql+psycopg://u:secret@127.0.0.1:9/x",
                 "--log-start-wait-s", "1", "--log-connect-timeout-s", "1"])
    assert code == 2 and time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert "tlp serve: prediction log postgresql+psycopg://u:***@127.0.0.1:9/x: not reachable after" in err
    assert "secret" not in err and "Traceback" not in err


def test_postgres_log_engine_has_statement_and_connect_timeouts() -> None:
    reason = postgres_reason()
    if reason is not None:
        pytest.skip(reason)
    from tl_platform.serving.log_schema import make_engine

    engine = make_engine(POSTGRES_URL, connect_timeout_s=3, statement_timeout_s=0.5)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "500ms"
            started = time.perf_counter()
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                connection.execute(sa.text("SELECT pg_sleep(5)"))
            assert time.perf_counter() - started < 2
    finally:
        engine.dispose()


def test_a_broken_challenger_at_start_leaves_the_champion_serving(
    tmp_path: Path, serving_bundles: ServingBundles, caplog: pytest.LogCaptureFixture
) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported, challenger_version="2", share=0.5)

    def loader(spec: VariantSpec, threads: int) -> ServingModel:
        if spec.version == "2":
            raise RuntimeError("onnxruntime: invalid graph")
        return load_variant(spec, threads)

    with caplog.at_level(logging.ERROR), TestClient(create_app(config(tmp_path, deployment), loader)) as client:
        answers = [client.post("/predict", json={"text": "fine", "unit_id": f"u{i}"}).json() for i in range(10)]
        assert {(a["variant"], a["model_version"]) for a in answers} == {("champion", "1")}
        ready = client.get("/readyz").json()
        assert (ready["status"], ready["challenger_version"], ready["challenger_share"]) == ("ready", None, 0.0)
        metrics = client.get("/metrics").text
        assert "tlp_deployment_degraded 1.0" in metrics
        assert 'tlp_deployment_reloads_total{outcome="challenger_dropped"} 1.0' in metrics
        rows = client.app.state.runtime.log.rows(SERVED)  # type: ignore[attr-defined]
        assert {r["challenger_share"] for r in rows} == {0.0}  # the analysis sees the split actually served
    assert "ALERT challenger 2 dropped" in caplog.text and "onnxruntime: invalid graph" in caplog.text
