"""The prediction log: group commit, typed features, text retention, the monitoring reader, feedback joined by
request id, duplicates refused, on SQLite (WAL) and Postgres."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.serving_fixtures import log_url
from tl_platform.serving.log_availability import LogUnavailableError
from tl_platform.serving.log_schema import PROJECTION_NAMES
from tl_platform.serving.prediction_log import (
    FEATURE_DTYPES,
    SERVED,
    SHADOW,
    CommitStats,
    DuplicateFeedbackError,
    InvalidFeedbackError,
    PredictionLog,
    PredictionRow,
    UnknownRequestError,
)

__all__ = ["log_url"]  # the fixture, imported for pytest
NOW = datetime.now(UTC)


def row(request_id: str, index: int = 0, role: str = SERVED, label: str = "1", ts: datetime | None = None,
        version: str = "3", projection: tuple[float, ...] = (0.5, -1.25), text: str | None = "great phone") -> PredictionRow:
    return PredictionRow(
        request_id=request_id, item_index=index, role=role, ts=ts or datetime.now(UTC), unit_id="u1", variant="champion",
        model_version=version, label=label, confidence=0.75, probabilities={"0": 0.25, "1": 0.75}, latency_ms=4.5,
        text_chars=11, token_count=5, unknown_share=0.2, truncated=False, projection=projection, text=text,
        experiment_id="exp-7", routing_salt="salt-7", challenger_share=0.25,
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
    assert [(j["item_index"], j["predicted"], j["true_label"], j["outcome"], j["experiment_id"]) for j in joined] == [
        (1, "0", "1", None, "exp-7"), (0, "1", None, 12.5, "exp-7")
    ]
    with pytest.raises(DuplicateFeedbackError, match=f"feedback for request_id '{rid}' item_index 1 was already recorded"):
        log.record_feedback(rid, 1, "0", None)
    with pytest.raises(UnknownRequestError, match="no served prediction with request_id 'bbbb"):
        log.record_feedback("b" * 32, 0, "1", None)
    with pytest.raises(UnknownRequestError, match="item_index 2"):
        log.record_feedback(rid, 2, "1", None)
    with pytest.raises(InvalidFeedbackError, match=r"label: must be one of the model's labels \['0', '1'\], got 'maybe'"):
        log.record_feedback(rid, 0, "maybe", None)
    log.close()


def test_rows_carry_text_typed_projection_and_the_split_in_force(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    log.start()
    rid = "e" * 32
    log.submit([row(rid, 0), row(rid, 1, projection=tuple(float(i) / 8 for i in range(8)), text=None),
                row(rid, 2, projection=())]).result(timeout=10)
    first, full, failed = (log.served_row(rid, i) for i in range(3))
    assert first is not None and full is not None and failed is not None
    assert [first[name] for name in PROJECTION_NAMES] == [0.5, -1.25, None, None, None, None, None, None]
    assert [full[name] for name in PROJECTION_NAMES] == [i / 8 for i in range(8)]
    assert [failed[name] for name in PROJECTION_NAMES] == [None] * 8
    assert "projection" not in first  # the JSON column is gone
    assert (first["text"], full["text"]) == ("great phone", None)
    assert (first["experiment_id"], first["routing_salt"], first["challenger_share"]) == ("exp-7", "salt-7", 0.25)
    assert (first["text_chars"], first["token_count"], first["unknown_share"], first["truncated"]) == (11, 5, 0.2, False)
    assert (first["confidence"], first["label"]) == (0.75, "1")
    log.close()


def test_a_projection_longer_than_the_log_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="projection: at most 8 components fit the log, got 9"):
        row("f" * 32, projection=(0.0,) * 9)


def test_purge_texts_removes_old_texts_only_in_batches_and_keeps_features(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    log.start()
    old = [row(f"{i:032x}", ts=NOW - timedelta(days=40, hours=i)) for i in range(7)]
    uncaptured = [row("c" * 32, ts=NOW - timedelta(days=50), text=None)]
    shadow = [row(f"{0:032x}", role=SHADOW, ts=NOW - timedelta(days=40))]
    recent = [row(f"{i + 100:032x}", ts=NOW - timedelta(days=29)) for i in range(3)]
    log.submit(old + uncaptured + shadow + recent).result(timeout=10)
    commits_before = log.commits
    # a cut-off in another time zone names the same instant: 30 days before now, in UTC+02:00
    cutoff = (NOW - timedelta(days=30)).astimezone(timezone(timedelta(hours=2)))
    assert log.purge_texts(cutoff, batch_rows=3) == 8  # 7 old served + 1 old shadow; the uncaptured had none
    rows = {(r["request_id"], r["role"]): r for r in log.rows()}
    assert all(rows[(r.request_id, r.role)]["text"] is None for r in old + uncaptured + shadow)
    assert [rows[(r.request_id, SERVED)]["text"] for r in recent] == ["great phone"] * 3
    assert all(rows[(r.request_id, r.role)]["projection_0"] == 0.5 and rows[(r.request_id, r.role)]["text_chars"] == 11
               for r in old)  # features stay
    assert log.purge_texts(cutoff) == 0
    assert log.commits == commits_before  # purges are not group commits
    with pytest.raises(ValueError, match="batch_rows must be at least 1, got 0"):
        log.purge_texts(cutoff, batch_rows=0)
    log.close()


def test_feature_frame_reads_one_version_in_a_time_window(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    log.start()
    day = datetime(2025, 3, 1, tzinfo=UTC)
    rows = [
        row("1" * 32, ts=day - timedelta(seconds=1)),  # before the window
        row("2" * 32, ts=day, projection=(1.0, 2.0, 3.0, 4.0)),  # on its start: in
        row("3" * 32, ts=day + timedelta(hours=5), projection=()),  # a failed scoring
        row("3" * 32, 1, ts=day + timedelta(hours=5)),
        row("4" * 32, ts=day + timedelta(hours=6), version="4"),  # another version
        row("5" * 32, ts=day + timedelta(hours=7), role=SHADOW),  # shadow
        row("6" * 32, ts=day + timedelta(days=1)),  # on its end: out
    ]
    log.submit(rows).result(timeout=10)
    frame = log.feature_frame("3", day, day + timedelta(days=1))
    assert list(frame["request_id"]) == ["2" * 32, "3" * 32, "3" * 32]
    assert list(frame["item_index"]) == [0, 0, 1]
    assert list(frame.columns) == ["ts", *FEATURE_DTYPES]
    assert {str(frame[c].dtype) for c in PROJECTION_NAMES} == {"float64"}
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]" and frame["ts"].iloc[1] == day + timedelta(hours=5)
    assert list(frame.iloc[0][list(PROJECTION_NAMES[:4])]) == [1.0, 2.0, 3.0, 4.0]
    assert math.isnan(frame["projection_4"].iloc[0]) and math.isnan(frame["projection_0"].iloc[1])
    assert list(frame["truncated"]) == [False] * 3 and list(frame["token_count"]) == [5] * 3
    assert list(frame["routing_salt"]) == ["salt-7"] * 3 and list(frame["challenger_share"]) == [0.25] * 3
    shadow = log.feature_frame("3", day, day + timedelta(days=1), role=SHADOW, include_text=True)
    assert list(shadow["request_id"]) == ["5" * 32] and list(shadow["text"]) == ["great phone"]
    naive = log.feature_frame("3", day.replace(tzinfo=None), (day + timedelta(hours=5)).replace(tzinfo=None))
    assert list(naive["request_id"]) == ["2" * 32]  # naive bounds are UTC
    empty = log.feature_frame("9", day, day + timedelta(days=1))
    assert len(empty) == 0 and str(empty["confidence"].dtype) == "float64"
    log.close()


def test_feature_query_uses_the_model_version_role_ts_index(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    day = datetime(2025, 3, 1, tzinfo=UTC)
    query = log.feature_query("3", day, day + timedelta(days=1))
    sql = str(query.compile(dialect=log.engine.dialect, compile_kwargs={"literal_binds": True}))
    with log.engine.connect() as connection:
        if log.engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        else:  # on an empty table the planner would scan; forbid that to see which index it can use
            connection.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(str(r[0]) for r in connection.exec_driver_sql(f"EXPLAIN {sql}"))
    assert f"ix_{log_url[1]}predictions_model_version_role_ts" in plan, plan
    log.close()


def test_a_failed_commit_fails_its_requests_and_the_writer_goes_on(log_url: tuple[str, str]) -> None:
    log = PredictionLog(log_url[0], log_url[1])
    log.start()
    log.submit([row("c" * 32)]).result(timeout=10)
    with pytest.raises(LogUnavailableError) as failed:
        log.submit([row("c" * 32)]).result(timeout=10)  # same primary key
    assert isinstance(failed.value.__cause__, sa.exc.IntegrityError)  # the cause, for the server's log
    assert "c" * 32 not in str(failed.value)  # the caller's message quotes no row of the group
    assert log.failed_commits == 1
    log.submit([row("d" * 32)]).result(timeout=10)
    assert len(log.rows()) == 2
    log.close()


def test_sqlite_runs_in_wal_mode_with_the_chosen_sync(tmp_path: Path) -> None:
    full = PredictionLog(f"sqlite:///{tmp_path / 'full.db'}", sqlite_synchronous="full")
    with full.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000  # restored after migrating
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
