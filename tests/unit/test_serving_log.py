"""The prediction log: group commit, feedback joined by request id, duplicates refused, SQLite WAL and Postgres."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tl_platform.serving.prediction_log import (
    SERVED,
    SHADOW,
    CommitStats,
    DuplicateFeedbackError,
    InvalidFeedbackError,
    PredictionLog,
    PredictionRow,
    UnknownRequestError,
)

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except sa.exc.OperationalError as err:
        return f"Postgres at 127.0.0.1:5432 (database test, user postgres) is unreachable: {str(err).splitlines()[0]}"
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}", ""
        return
    reason = _postgres_reason()
    if reason is not None:
        pytest.skip(reason)
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    yield POSTGRES_URL, prefix
    cleanup = PredictionLog(POSTGRES_URL, prefix)
    cleanup.drop_tables()
    cleanup.engine.dispose()


def row(request_id: str, index: int = 0, role: str = SERVED, label: str = "1") -> PredictionRow:
    return PredictionRow(
        request_id=request_id, item_index=index, role=role, ts=datetime.now(UTC), unit_id="u1", variant="champion",
        model_version="3", label=label, confidence=0.75, probabilities={"0": 0.25, "1": 0.75}, latency_ms=4.5,
        text_chars=11, token_count=5, unknown_share=0.2, truncated=False, projection=(0.5, -1.25),
    )


def test_group_commit_writes_pending_rows_of_concurrent_requests_in_one_transaction(log_url: tuple[str, str]) -> None:
    commits: list[CommitStats] = []
    log = PredictionLog(log_url[0], log_url[1], on_commit=commits.append)
    futures = []
    threads = [threading.Thread(target=lambda i=i: futures.append(log.submit([row(f"{i:032x}")]))) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(futures) == 20 and not any(f.done() for f in futures)  # nobody is released before the commit
    log.start()
    for future in futures:
        future.result(timeout=10)
    assert log.commits == 1 and [c.rows for c in commits] == [20]
    assert len(log.rows(SERVED)) == 20
    log.close()


def test_writer_keeps_grouping_under_load_and_caps_rows_per_commit(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1], max_rows_per_commit=7)
    futures = [log.submit([row(f"{i:032x}", j) for j in range(2)]) for i in range(10)]
    log.start()
    for future in futures:
        future.result(timeout=10)
    assert log.commits == 3  # 4 + 4 + 2 requests of 2 rows under a 7-row cap (a group stops once it reaches 7)
    assert len(log.rows()) == 20
    log.close()


def test_feedback_joins_by_request_id_and_duplicates_are_refused(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    log.start()
    rid = "a" * 32
    log.submit([row(rid, 0), row(rid, 1, label="0"), row(rid, 0, role=SHADOW, label="0")]).result(timeout=10)
    log.record_feedback(rid, 1, "1", None)
    log.record_feedback(rid, 0, None, 12.5)
    joined = log.joined_feedback()
    assert [(j["item_index"], j["predicted"], j["true_label"], j["outcome"]) for j in joined] == [
        (1, "0", "1", None), (0, "1", None, 12.5)
    ]
    with pytest.raises(DuplicateFeedbackError, match=f"feedback for request_id '{rid}' item_index 1 was already recorded"):
        log.record_feedback(rid, 1, "0", None)
    with pytest.raises(UnknownRequestError, match="no served prediction with request_id 'bbbb"):
        log.record_feedback("b" * 32, 0, "1", None)
    with pytest.raises(UnknownRequestError, match="item_index 2"):
        log.record_feedback(rid, 2, "1", None)
    with pytest.raises(InvalidFeedbackError, match=r"label: must be one of the model's labels \['0', '1'\], got 'maybe'"):
        log.record_feedback(rid, 0, "maybe", None)
    served = log.served_row(rid, 0)
    assert served is not None and served["projection"] == "[0.5, -1.25]" and served["unknown_share"] == 0.2
    log.close()


def test_a_failed_commit_fails_its_requests_and_the_writer_goes_on(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    log.start()
    log.submit([row("c" * 32)]).result(timeout=10)
    with pytest.raises(sa.exc.IntegrityError):
        log.submit([row("c" * 32)]).result(timeout=10)  # same primary key
    assert log.failed_commits == 1
    log.submit([row("d" * 32)]).result(timeout=10)
    assert len(log.rows()) == 2
    log.close()


def test_sqlite_runs_in_wal_mode_with_the_chosen_sync(tmp_path: Path) -> None:
    full = PredictionLog(f"sqlite:///{tmp_path / 'full.db'}", sqlite_synchronous="full")
    with full.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    full.engine.dispose()
    with pytest.raises(ValueError, match="sqlite_synchronous must be 'normal' or 'full', got 'off'"):
        PredictionLog(f"sqlite:///{tmp_path / 'off.db'}", sqlite_synchronous="off")
    log = PredictionLog(f"sqlite:///{tmp_path / 'nested' / 'log.db'}")
    with log.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: survives SIGKILL
    log.start()
    log.submit([row("e" * 32)]).result(timeout=10)
    assert (tmp_path / "nested" / "log.db-wal").exists()
    log.close()
