"""The prediction log's monitoring and retraining reads: SQL filters and joins, pandas frames (or counts) out.

Called through ``PredictionLog`` (``feature_frame``, ``labelled_window``, ``served_counts``, ``labels_recorded``,
``served_row``, ``rows``, ``joined_feedback``); kept here so the log's write path stays small. Every bound is half-open, ``start <= ts < end``, and a naive bound is taken to
be UTC (the log stores UTC). Plans, checked with EXPLAIN on SQLite and Postgres after ANALYZE
(tests/unit/test_prediction_log_readers.py): the window and the counts read predictions through
``ix_predictions_ts`` or ``ix_predictions_model_version_role_ts`` (a range of ts), never a full scan, and SQLite
finds each row's feedback by the feedback primary key; ``labels_recorded`` reads ``ix_feedback_ts``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tl_platform.serving.log_schema import PROJECTION_NAMES

if TYPE_CHECKING:
    import pandas as pd

SERVED = "served"  # PredictionRow.role of the answer a caller got (re-exported as prediction_log.SERVED)

# feature_frame's columns and their pandas dtypes (NULL becomes NaN in the float columns)
FEATURE_DTYPES: dict[str, str] = {
    "request_id": "object", "item_index": "int64", "unit_id": "object", "variant": "object",
    "experiment_id": "object", "routing_salt": "object", "challenger_share": "float64", "label": "object",
    "confidence": "float64", "latency_ms": "float64", "text_chars": "int64", "token_count": "int64",
    "unknown_share": "float64", "truncated": "bool", **dict.fromkeys(PROJECTION_NAMES, "float64"), "error": "object",
}
# labelled_window's columns and their pandas dtypes. ts and feedback_ts are UTC; attributes holds a dict (None when
# the request sent none); text is None once purged, or when capture was off.
LABELLED_DTYPES: dict[str, str] = {
    "request_id": "object", "item_index": "int64", "ts": "datetime64[ns, UTC]", "feedback_ts": "datetime64[ns, UTC]",
    "model_version": "object", "variant": "object", "unit_id": "object", "predicted": "object",
    "true_label": "object", "confidence": "float64", "attributes": "object", "text": "object",
}


def as_utc(moment: datetime) -> datetime:
    """An aware UTC time; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def attributes_to_json(attributes: Mapping[str, str] | None) -> str | None:
    """Canonical JSON (sorted keys, no spaces) so equal attributes store equal text; None or empty is NULL."""
    if not attributes:
        return None
    return json.dumps(dict(attributes), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_attributes(stored: str | None) -> dict[str, str] | None:
    return json.loads(stored) if stored is not None else None


def parse_attributes_column(stored: pd.Series) -> pd.Series:
    """A column of stored JSON as an object column of dicts (None where NULL), on the same index."""
    import pandas as pd

    return pd.Series([parse_attributes(v) for v in stored], index=stored.index, dtype="object")


def labelled_query(
    predictions: sa.Table, feedback: sa.Table, start: datetime, end: datetime,
    feedback_before: datetime | None = None, model_version: str | None = None,
) -> sa.Select[Any]:
    """The SELECT behind ``labelled_window``, in ``LABELLED_DTYPES`` column order."""
    p, f = predictions, feedback
    conditions = [p.c.role == SERVED, p.c.ts >= as_utc(start), p.c.ts < as_utc(end), f.c.label.is_not(None)]
    if feedback_before is not None:
        conditions.append(f.c.ts < as_utc(feedback_before))
    if model_version is not None:
        conditions.append(p.c.model_version == model_version)
    return (
        sa.select(p.c.request_id, p.c.item_index, p.c.ts, f.c.ts.label("feedback_ts"), p.c.model_version, p.c.variant,
                  p.c.unit_id, p.c.label.label("predicted"), f.c.label.label("true_label"), p.c.confidence,
                  p.c.attributes, p.c.text)
        .join(f, sa.and_(p.c.request_id == f.c.request_id, p.c.item_index == f.c.item_index))
        .where(*conditions)
        .order_by(p.c.ts, p.c.request_id, p.c.item_index)
    )


def labelled_window(
    engine: Engine, predictions: sa.Table, feedback: sa.Table, start: datetime, end: datetime,
    feedback_before: datetime | None = None, model_version: str | None = None,
) -> pd.DataFrame:
    """Served rows with ``start <= ts < end`` joined to a feedback label recorded before ``feedback_before`` (None:
    any time), optionally of one model version, in time order; outcome-only feedback is left out.

    Columns and dtypes are ``LABELLED_DTYPES``: ``predicted`` is the served label, ``true_label`` the feedback's.
    A canary re-scored later with a later ``feedback_before`` sees the late labels too.
    """
    import pandas as pd

    query = labelled_query(predictions, feedback, start, end, feedback_before, model_version)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = pd.DataFrame.from_records(rows, columns=list(LABELLED_DTYPES))
    for column in ("ts", "feedback_ts"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["attributes"] = parse_attributes_column(frame["attributes"])
    frame["text"] = frame["text"].astype("object").where(frame["text"].notna(), None)
    return frame.astype(LABELLED_DTYPES)


def served_counts_query(predictions: sa.Table, start: datetime, end: datetime) -> sa.Select[Any]:
    p = predictions
    return (
        sa.select(p.c.model_version, p.c.variant, sa.func.count())
        .where(p.c.role == SERVED, p.c.ts >= as_utc(start), p.c.ts < as_utc(end))
        .group_by(p.c.model_version, p.c.variant)
    )


def served_counts(engine: Engine, predictions: sa.Table, start: datetime, end: datetime) -> dict[tuple[str, str], int]:
    """{(model_version, variant): served rows with ``start <= ts < end``}; shadow rows are not counted."""
    query = served_counts_query(predictions, start, end)
    with engine.connect() as connection:
        return {(version, variant): int(count) for version, variant, count in connection.execute(query)}


def labels_recorded_query(
    predictions: sa.Table, feedback: sa.Table, since: datetime, until: datetime | None = None
) -> sa.Select[Any]:
    p, f = predictions, feedback
    conditions = [f.c.ts >= as_utc(since), f.c.label.is_not(None)]
    if until is not None:
        conditions.append(f.c.ts < as_utc(until))
    return (
        sa.select(p.c.ts)
        .select_from(f)
        .join(p, sa.and_(p.c.request_id == f.c.request_id, p.c.item_index == f.c.item_index, p.c.role == SERVED))
        .where(*conditions)
    )


def labels_recorded(
    engine: Engine, predictions: sa.Table, feedback: sa.Table, since: datetime, until: datetime | None = None
) -> dict[date, int]:
    """{UTC day a prediction was served: labels for it recorded in ``[since, until)``}, None ``until``: up to now.

    What a monitor asks before re-scoring: which day windows gained late labels since it last ran. The day is
    computed here rather than in SQL, where Postgres would use the session's time zone.
    """
    query = labels_recorded_query(predictions, feedback, since, until)
    counts: dict[date, int] = {}
    with engine.connect() as connection:
        for (served_at,) in connection.execute(query):
            day = as_utc(served_at).date()
            counts[day] = counts.get(day, 0) + 1
    return dict(sorted(counts.items()))



def with_attributes(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored row as a dict, its ``attributes`` JSON parsed (None where NULL)."""
    data = dict(row)
    data["attributes"] = parse_attributes(data.get("attributes"))
    return data


def feature_query(
    predictions: sa.Table, model_version: str, start: datetime, end: datetime, role: str = SERVED,
    include_text: bool = False, include_attributes: bool = False,
) -> sa.Select[Any]:
    """The SELECT behind ``feature_frame``: served by the (model_version, ts) index, in time order."""
    p = predictions
    names = ["ts", *FEATURE_DTYPES, *(["text"] if include_text else []), *(["attributes"] if include_attributes else [])]
    return (
        sa.select(*(p.c[name] for name in names))
        .where(p.c.model_version == model_version, p.c.ts >= as_utc(start), p.c.ts < as_utc(end), p.c.role == role)
        .order_by(p.c.ts, p.c.request_id, p.c.item_index)
    )


def feature_frame(
    engine: Engine, predictions: sa.Table, model_version: str, start: datetime, end: datetime, role: str = SERVED,
    include_text: bool = False, include_attributes: bool = False,
) -> pd.DataFrame:
    """One model version's rows with ``start <= ts < end``: time (UTC), keys, routing and typed features.

    Float columns hold NaN for NULL (a failed scoring, a projection shorter than 8, rows logged before the
    experiment columns existed). ``include_text`` adds the text (None once purged, or when capture was off);
    ``include_attributes`` the slice attributes (a dict, or None). A naive ``start`` or ``end`` is taken to
    be UTC.
    """
    import pandas as pd

    query = feature_query(predictions, model_version, start, end, role, include_text, include_attributes)
    with engine.connect() as connection:
        result = connection.execute(query)
        frame = pd.DataFrame.from_records(result.all(), columns=list(result.keys()))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    if include_attributes:
        frame["attributes"] = parse_attributes_column(frame["attributes"])
    return frame.astype(FEATURE_DTYPES)


def served_row(engine: Engine, predictions: sa.Table, request_id: str, item_index: int = 0) -> dict[str, Any] | None:
    """The served row of one request's text, or None."""
    p = predictions
    query = sa.select(p).where(p.c.request_id == request_id, p.c.item_index == item_index, p.c.role == SERVED)
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return with_attributes(row) if row is not None else None


def rows(engine: Engine, predictions: sa.Table, role: str | None = None) -> list[dict[str, Any]]:
    """Every row (of one role), in time order, ``attributes`` as a dict (tests and small logs)."""
    query = sa.select(predictions).order_by(predictions.c.ts, predictions.c.item_index)
    if role is not None:
        query = query.where(predictions.c.role == role)
    with engine.connect() as connection:
        return [with_attributes(r) for r in connection.execute(query).mappings()]


def joined_feedback(engine: Engine, predictions: sa.Table, feedback: sa.Table) -> list[dict[str, Any]]:
    """Served predictions with their feedback (label, outcome) and attributes, for accuracy and business metrics."""
    p, f = predictions, feedback
    query = (
        sa.select(p.c.request_id, p.c.item_index, p.c.variant, p.c.model_version, p.c.experiment_id,
                  p.c.label.label("predicted"), f.c.label.label("true_label"), f.c.outcome,
                  f.c.ts.label("feedback_ts"), p.c.attributes)
        .join(f, sa.and_(p.c.request_id == f.c.request_id, p.c.item_index == f.c.item_index))
        .where(p.c.role == SERVED)
        .order_by(f.c.ts)
    )
    with engine.connect() as connection:
        return [with_attributes(r) for r in connection.execute(query).mappings()]
