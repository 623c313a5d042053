"""The prediction log's monitoring and retraining reads: the labelled window (late labels, outcome-only feedback,
model versions, attributes, purged texts), served counts, label arrivals, and the indexes their plans use; slice
attributes and event times on rows and feedback. On SQLite and Postgres."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from tests.serving_fixtures import log_url, started_log
from tl_platform.serving import log_readers
from tl_platform.serving.log_readers import LABELLED_DTYPES
from tl_platform.serving.prediction_log import (
    SERVED,
    SHADOW,
    FeedbackBeforePredictionError,
    PredictionLog,
    PredictionRow,
)

__all__ = ["log_url", "started_log"]  # the fixture, imported for pytest
DAY = datetime(2025, 3, 1, tzinfo=UTC)


def row(request_id: str, ts: datetime, index: int = 0, role: str = SERVED, label: str = "1", version: str = "3",
        variant: str = "champion", attributes: dict[str, str] | None = None, text: str | None = "a text") -> PredictionRow:
    return PredictionRow(
        request_id=request_id, item_index=index, role=role, ts=ts, unit_id=f"u-{request_id[:2]}", variant=variant,
        model_version=version, label=label, confidence=0.75, probabilities={"0": 0.25, "1": 0.75}, latency_ms=4.5,
        text_chars=6, token_count=2, unknown_share=0.0, truncated=False, projection=(0.5,), text=text,
        experiment_id=None, routing_salt="tlp-ab", challenger_share=0.0, attributes=attributes,
    )


@pytest.fixture
def log(started_log: PredictionLog) -> PredictionLog:
    return started_log


def rid(n: int) -> str:
    return f"{n:032x}"


def test_labelled_window_joins_labels_of_served_rows_in_the_window(log: PredictionLog) -> None:
    log.submit([
        row(rid(1), DAY - timedelta(seconds=1)),  # before the window
        row(rid(2), DAY, attributes={"tenant": "acme", "domain": "yelp"}),  # on its start: in
        row(rid(2), DAY, role=SHADOW, label="0"),  # the shadow's answer is not the served one
        row(rid(3), DAY + timedelta(hours=2), index=0, label="0", text=None),  # text not captured
        row(rid(3), DAY + timedelta(hours=2), index=1, version="4", variant="challenger"),
        row(rid(4), DAY + timedelta(hours=3)),  # outcome-only feedback
        row(rid(5), DAY + timedelta(hours=4)),  # no feedback at all
        row(rid(6), DAY + timedelta(days=1)),  # on its end: out
    ]).result(timeout=10)
    log.record_feedback(rid(1), 0, "1", None, ts=DAY)
    log.record_feedback(rid(2), 0, "0", 3.0, ts=DAY + timedelta(hours=1))
    log.record_feedback(rid(3), 0, "0", None, ts=DAY + timedelta(days=2))  # late: two days after
    log.record_feedback(rid(3), 1, "1", None, ts=DAY + timedelta(hours=5))
    log.record_feedback(rid(4), 0, None, 7.5, ts=DAY + timedelta(hours=3))
    log.record_feedback(rid(6), 0, "1", None, ts=DAY + timedelta(days=1))

    frame = log.labelled_window(DAY, DAY + timedelta(days=1))
    assert list(frame.columns) == list(LABELLED_DTYPES)
    assert {c: str(frame[c].dtype) for c in frame.columns} == LABELLED_DTYPES
    assert [(r, i) for r, i in zip(frame["request_id"], frame["item_index"], strict=True)] == [
        (rid(2), 0), (rid(3), 0), (rid(3), 1)]
    assert list(frame["predicted"]) == ["1", "0", "1"] and list(frame["true_label"]) == ["0", "0", "1"]
    assert list(frame["model_version"]) == ["3", "3", "4"] and list(frame["variant"]) == ["champion", "champion", "challenger"]
    assert list(frame["ts"]) == [DAY, DAY + timedelta(hours=2), DAY + timedelta(hours=2)]
    assert list(frame["feedback_ts"]) == [DAY + timedelta(hours=1), DAY + timedelta(days=2), DAY + timedelta(hours=5)]
    assert frame["attributes"].iloc[0] == {"domain": "yelp", "tenant": "acme"} and frame["attributes"].iloc[1] is None
    assert list(frame["text"]) == ["a text", None, "a text"] and list(frame["confidence"]) == [0.75] * 3
    assert list(frame["unit_id"]) == [f"u-{rid(2)[:2]}", f"u-{rid(3)[:2]}", f"u-{rid(3)[:2]}"]

    # scored a day after the window closed, the late label of rid(3) item 0 had not arrived yet
    early = log.labelled_window(DAY, DAY + timedelta(days=1), feedback_before=DAY + timedelta(days=1))
    assert [(r, i) for r, i in zip(early["request_id"], early["item_index"], strict=True)] == [(rid(2), 0), (rid(3), 1)]
    assert list(log.labelled_window(DAY, DAY + timedelta(days=1), model_version="4")["request_id"]) == [rid(3)]
    naive = log.labelled_window(DAY.replace(tzinfo=None), (DAY + timedelta(hours=1)).replace(tzinfo=None))
    assert list(naive["request_id"]) == [rid(2)]  # naive bounds are UTC
    other_zone = timezone(timedelta(hours=-5))  # the same instants, written in UTC-05:00
    assert len(log.labelled_window(DAY.astimezone(other_zone), (DAY + timedelta(days=1)).astimezone(other_zone))) == 3

    empty = log.labelled_window(DAY + timedelta(days=10), DAY + timedelta(days=11))
    assert len(empty) == 0 and {c: str(empty[c].dtype) for c in empty.columns} == LABELLED_DTYPES


def test_served_counts_per_version_and_variant_without_shadow_rows(log: PredictionLog) -> None:
    log.submit([
        *(row(rid(i), DAY + timedelta(minutes=i)) for i in range(5)),
        *(row(rid(100 + i), DAY + timedelta(minutes=i), version="4", variant="challenger") for i in range(3)),
        row(rid(0), DAY, role=SHADOW, version="4", variant="challenger"),
        row(rid(200), DAY + timedelta(days=1)),
        row(rid(201), DAY - timedelta(microseconds=1)),
    ]).result(timeout=10)
    assert log.served_counts(DAY, DAY + timedelta(days=1)) == {("3", "champion"): 5, ("4", "challenger"): 3}
    assert log.served_counts(DAY, DAY + timedelta(minutes=2)) == {("3", "champion"): 2, ("4", "challenger"): 2}
    assert log.served_counts(DAY + timedelta(days=5), DAY + timedelta(days=6)) == {}


def test_labels_recorded_names_the_days_late_labels_changed(log: PredictionLog) -> None:
    log.submit([row(rid(1), DAY), row(rid(2), DAY + timedelta(hours=23)), row(rid(3), DAY + timedelta(days=1)),
                row(rid(4), DAY + timedelta(days=1))]).result(timeout=10)
    log.record_feedback(rid(1), 0, "1", None, ts=DAY + timedelta(days=2))
    log.record_feedback(rid(2), 0, "0", None, ts=DAY + timedelta(days=2, hours=1))
    log.record_feedback(rid(3), 0, "1", None, ts=DAY + timedelta(days=2, hours=2))
    log.record_feedback(rid(4), 0, None, 1.0, ts=DAY + timedelta(days=2, hours=3))  # an outcome is not a label
    since = DAY + timedelta(days=2)
    assert log.labels_recorded(since) == {date(2025, 3, 1): 2, date(2025, 3, 2): 1}
    assert log.labels_recorded(since, since + timedelta(hours=1)) == {date(2025, 3, 1): 1}
    assert log.labels_recorded(since + timedelta(hours=4)) == {}


def test_attributes_are_stored_as_canonical_json_and_read_back_as_dicts(log: PredictionLog) -> None:
    attributes = {"tenant": "acme", "device": "ios", "domain": "yelp", "note": "naïve ☕"}
    log.submit([row(rid(1), DAY, attributes=attributes), row(rid(2), DAY, attributes={}),
                row(rid(3), DAY)]).result(timeout=10)
    with log.engine.connect() as connection:
        stored = dict(connection.execute(sa.select(log.predictions.c.request_id, log.predictions.c.attributes)).all())
    assert stored == {rid(1): '{"device":"ios","domain":"yelp","note":"naïve ☕","tenant":"acme"}', rid(2): None,
                      rid(3): None}  # sorted keys, so equal attributes store equal text; empty is NULL
    assert [r["attributes"] for r in log.rows()] == [attributes, None, None]
    served = log.served_row(rid(1))
    assert served is not None and served["attributes"] == attributes
    frame = log.feature_frame("3", DAY, DAY + timedelta(days=1), include_attributes=True)
    assert list(frame["attributes"]) == [attributes, None, None] and str(frame["attributes"].dtype) == "object"
    assert "attributes" not in log.feature_frame("3", DAY, DAY + timedelta(days=1)).columns  # opt-in: 1M-row reads


def test_event_times_are_stored_in_utc_and_feedback_may_not_precede_its_prediction(log: PredictionLog) -> None:
    plus_two = timezone(timedelta(hours=2))
    served_at = datetime(2025, 3, 1, 14, 0, tzinfo=plus_two)  # 12:00 UTC
    log.submit([row(rid(1), served_at)]).result(timeout=10)
    served = log.served_row(rid(1))
    assert served is not None and log_readers.as_utc(served["ts"]) == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert log.served_counts(datetime(2025, 3, 1, 12, tzinfo=UTC), datetime(2025, 3, 1, 12, 1, tzinfo=UTC)) == {
        ("3", "champion"): 1}
    with pytest.raises(FeedbackBeforePredictionError, match=(
            r"ts: feedback at 2025-03-01T11:59:59\+00:00 precedes its prediction, served at 2025-03-01T12:00:00\+00:00")):
        log.record_feedback(rid(1), 0, "1", None, ts=datetime(2025, 3, 1, 13, 59, 59, tzinfo=plus_two))
    log.record_feedback(rid(1), 0, "1", None, ts=datetime(2025, 3, 1, 15, 30, tzinfo=plus_two))
    frame = log.labelled_window(DAY, DAY + timedelta(days=1))
    assert list(frame["feedback_ts"]) == [datetime(2025, 3, 1, 13, 30, tzinfo=UTC)]


def _plan(log: PredictionLog, query: sa.Select[Any]) -> str:
    sql = str(query.compile(dialect=log.engine.dialect, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN" if log.engine.dialect.name == "sqlite" else "EXPLAIN"
    with log.engine.connect() as connection:
        return " | ".join(str(r[-1]) for r in connection.exec_driver_sql(f"{explain} {sql}"))


def test_the_readers_plans_use_the_logs_indexes(log: PredictionLog, log_url: tuple[str, str]) -> None:
    """20 days of 1,000 served rows, a tenth labelled within two days, planner statistics gathered: the reads of
    one day stay on the indexes (a plan on empty tables says little, on Postgres least of all)."""
    prefix = log_url[1]
    days, per_day = 20, 1000
    predictions = [row(rid(d * per_day + i), DAY + timedelta(days=d, seconds=86.4 * i),
                       **({"version": "4", "variant": "challenger"} if i % 10 == 3 else {})).to_db()  # type: ignore[arg-type]
                   for d in range(days) for i in range(per_day)]
    labels = [{"request_id": p["request_id"], "item_index": 0, "ts": p["ts"] + timedelta(hours=i % 48), "label": "1",
               "outcome": None} for i, p in enumerate(predictions) if i % 10 == 0]
    with log.engine.begin() as connection:
        connection.execute(log.predictions.insert(), predictions)
        connection.execute(log.feedback.insert(), labels)
    with log.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    day = DAY + timedelta(days=10)
    end = day + timedelta(days=1)
    window = _plan(log, log_readers.labelled_query(log.predictions, log.feedback, day, end, end + timedelta(days=2)))
    one_version = _plan(log, log_readers.labelled_query(log.predictions, log.feedback, day, end, model_version="3"))
    counts = _plan(log, log_readers.served_counts_query(log.predictions, day, end))
    arrivals = _plan(log, log_readers.labels_recorded_query(log.predictions, log.feedback, day, end))
    for plan in (window, one_version, counts):  # one of the two ts indexes, whichever the statistics favour
        assert f"ix_{prefix}predictions_ts" in plan or f"ix_{prefix}predictions_model_version_role_ts" in plan, plan
        assert f"SCAN {prefix}predictions" not in plan and f"Seq Scan on {prefix}predictions" not in plan, plan
    assert f"ix_{prefix}feedback_ts" in arrivals, arrivals
    if log.engine.dialect.name == "sqlite":  # each row's feedback (or prediction) found by primary key, not scanned
        assert "SEARCH feedback USING INDEX sqlite_autoindex_feedback_1 (request_id=? AND item_index=?)" in window, window
        assert "SEARCH predictions USING INDEX sqlite_autoindex_predictions_1" in arrivals, arrivals
        assert "SCAN" not in window + one_version + counts + arrivals, (window, one_version, counts, arrivals)
    assert len(log.labelled_window(day, end)) == 100 and len(log.labelled_window(day, end, model_version="3")) == 100
    assert log.served_counts(day, end) == {("3", "champion"): 900, ("4", "challenger"): 100}
    served_at = {p["request_id"]: p["ts"] for p in predictions}
    expected = Counter(served_at[label["request_id"]].date() for label in labels if day <= label["ts"] < end)
    assert log.labels_recorded(day, end) == dict(sorted(expected.items())) and len(expected) == 3  # labels lag 0-47 h


def test_a_purged_text_reads_as_none_in_the_labelled_window(log: PredictionLog) -> None:
    log.submit([row(rid(1), DAY - timedelta(days=40))]).result(timeout=10)
    log.record_feedback(rid(1), 0, "0", None, ts=DAY - timedelta(days=39))
    assert log.purge_texts(DAY) == 1
    frame = log.labelled_window(DAY - timedelta(days=41), DAY)
    assert list(frame["text"]) == [None] and not math.isnan(frame["confidence"].iloc[0])
