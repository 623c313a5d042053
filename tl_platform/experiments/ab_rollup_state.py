"""The A/B rollup's shared parts: its errors and report, the experiment lock, the temporary tables of one fold, and
the contributions a unit's state makes to the daily and slice statistics (see ``ab_rollup`` for the design)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tl_platform.experiments.ab_aggregate import (
    _daily_part,
    _day,
    _slice_value,
)
from tl_platform.experiments.ab_spec import MetricKind
from tl_platform.serving.log_readers import SERVED
from tl_platform.serving.log_schema import LogTables, RollupTables

METRICS: tuple[MetricKind, ...] = ("proportion", "mean")
FEEDBACK_SETTLE = timedelta(seconds=60)  # labels younger than this wait for the next fold (writes in flight)
TAIL_KEEP = 4  # the latency tail holds this many times the top values the p99 reads ...
TAIL_PRUNE = 8  # ... and is cut back to that when it grows past this many times
TAIL_MIN_ROWS = 1_000  # small arms keep every latency
_SUMS = ("labelled", "correct", "outcome_n", "outcome_sum")
_DAILY = ("n", "total", "total_sq", "new_units", "change", "change_sq")


class RollupError(ValueError):
    """The rollup cannot fold or answer as asked (not folded, another window or slice keys); the message says
    what differs and what to do."""


@dataclass(frozen=True)
class FoldReport:
    """What one fold did: the served and feedback ranges now folded, what was new, and whether it rebuilt."""

    experiment_id: str
    served_up_to: datetime
    feedback_up_to: datetime
    served_rows: int  # served rows folded by this call (with or without a unit or feedback)
    unit_days_updated: int  # (arm, unit, day) sums that new rows or late labels changed
    refolded: str | None  # why the state was rebuilt from the start; None when folded incrementally


def _rollup(tables: LogTables) -> RollupTables:
    if tables.rollup is None:
        raise RollupError("tables.rollup is None: build the tables with log_schema.log_tables(prefix), "
                          "which includes the rollup tables of revision 0004")
    return tables.rollup


def _lock_key(table: str, experiment_id: str) -> int:
    digest = hashlib.sha256(f"tl_platform.ab_rollup:{table}:{experiment_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _begin_locked(connection: Connection, state: sa.Table, experiment_id: str) -> None:
    dialect = connection.dialect.name
    if dialect == "sqlite":  # the one write lock, taken before the watermark is read
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":  # released by the commit or rollback; a second fold waits here
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(state.name, experiment_id))))
    else:
        raise RollupError(f"the prediction log runs on sqlite or postgresql, not {dialect}")


def _upsert(connection: Connection, table: sa.Table) -> Any:
    return (postgresql.insert(table) if connection.dialect.name == "postgresql" else sqlite.insert(table))


# -- temporary tables of one fold ----------------------------------------------------------------------------


def _temporary(slice_count: int) -> dict[str, sa.Table]:
    metadata = sa.MetaData()

    def sums() -> list[sa.Column[Any]]:
        return [sa.Column("labelled", sa.Integer), sa.Column("correct", sa.Integer),
                sa.Column("outcome_n", sa.Integer), sa.Column("outcome_sum", sa.Float)]

    def table(name: str, *columns: sa.Column[Any]) -> sa.Table:
        return sa.Table(name, metadata, *columns, prefixes=["TEMPORARY"])

    def key(name: str) -> sa.Column[Any]:
        return sa.Column(name, sa.String, primary_key=True)

    # keyed, so the joins to the state tables are index lookups, not a scan per touched unit
    return {
        "raw": table("tlp_fold_raw", sa.Column("variant", sa.String), sa.Column("unit_id", sa.String),
                     sa.Column("day", sa.Date), *(sa.Column(f"s{i}", sa.String) for i in range(slice_count)), *sums()),
        "unit_days": table("tlp_fold_unit_days", key("variant"), key("unit_id"), sa.Column("day", sa.Date, primary_key=True),
                           *sums()),
        "unit_slices": table("tlp_fold_unit_slices", key("slice_key"), key("slice_value"), key("variant"),
                             key("unit_id"), *sums()),
        "affected": table("tlp_fold_affected", key("variant"), key("unit_id")),
        "units": table("tlp_fold_units", key("unit_id"), sa.Column("champion", sa.Integer),
                       sa.Column("challenger", sa.Integer)),
    }


def _feedback_sums(tables: LogTables) -> list[sa.ColumnElement[Any]]:
    p, f = tables.predictions, tables.feedback
    one = sa.literal(1, sa.Integer)
    return [
        sa.func.sum(sa.case((f.c.label.is_not(None), one), else_=0)).label("labelled"),
        sa.func.sum(sa.case((sa.and_(f.c.label.is_not(None), f.c.label == p.c.label), one), else_=0)).label("correct"),
        sa.func.sum(sa.case((f.c.outcome.is_not(None), one), else_=0)).label("outcome_n"),
        sa.func.coalesce(sa.func.sum(f.c.outcome), 0.0).label("outcome_sum"),
    ]


def _labelled_rows(connection: Connection, tables: LogTables, experiment_id: str, slice_keys: Sequence[str],
                   where: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
    """Per (arm, unit, day, slice values) the feedback sums of served rows joined to their feedback."""
    p, f = tables.predictions, tables.feedback
    day = _day(connection, p.c.ts)
    slices = [sa.cast(_slice_value(connection, p.c.attributes, key), sa.String) for key in slice_keys]
    return (
        sa.select(p.c.variant, p.c.unit_id, day, *slices, *_feedback_sums(tables))
        .join(f, sa.and_(f.c.request_id == p.c.request_id, f.c.item_index == p.c.item_index))
        .where(p.c.experiment_id == experiment_id, p.c.role == SERVED, p.c.unit_id.is_not(None),
               sa.or_(f.c.label.is_not(None), f.c.outcome.is_not(None)), *where)
        .group_by(p.c.variant, p.c.unit_id, day, *slices)
    )


# -- contributions to the series, from the unit state ---------------------------------------------------------


def _num_den(table: sa.Table, metric: MetricKind) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
    if metric == "proportion":
        return sa.cast(table.c.correct, sa.Float), sa.cast(table.c.labelled, sa.Float)
    return sa.cast(table.c.outcome_sum, sa.Float), sa.cast(table.c.outcome_n, sa.Float)


def _daily_contributions(connection: Connection, rollup: RollupTables, temporary: dict[str, sa.Table],
                         experiment_id: str, metric: MetricKind) -> list[Any]:
    """The touched units' contributions to each (day, arm) of the series, from their whole history of days."""
    u, affected = rollup.unit_days, temporary["affected"]
    num, den = _num_den(u, metric)
    unit_days = (
        sa.select(u.c.variant, u.c.unit_id, u.c.day, num.label("num"), den.label("den"))
        .select_from(affected)
        .join(u, sa.and_(affected.c.variant == u.c.variant, affected.c.unit_id == u.c.unit_id))
        .where(u.c.experiment_id == experiment_id, u.c.labelled > 0 if metric == "proportion" else u.c.outcome_n > 0)
        .cte("unit_days")
    )
    return list(connection.execute(_daily_part(connection, unit_days, regroup=False)).all())


def _slice_contributions(connection: Connection, rollup: RollupTables, temporary: dict[str, sa.Table],
                         experiment_id: str, metric: MetricKind) -> list[Any]:
    s, touched = rollup.unit_slices, temporary["unit_slices"]
    num, den = _num_den(s, metric)
    value = num / den
    return list(connection.execute(
        sa.select(s.c.variant, s.c.slice_key, s.c.slice_value, sa.func.count(), sa.func.sum(value),
                  sa.func.sum(value * value))
        .select_from(touched)
        .join(s, sa.and_(touched.c.slice_key == s.c.slice_key, touched.c.slice_value == s.c.slice_value,
                               touched.c.variant == s.c.variant, touched.c.unit_id == s.c.unit_id))
        .where(s.c.experiment_id == experiment_id, s.c.labelled > 0 if metric == "proportion" else s.c.outcome_n > 0)
        .group_by(s.c.variant, s.c.slice_key, s.c.slice_value)
    ).all())


def _add(totals: dict[tuple[Any, ...], list[float]], key: tuple[Any, ...], values: Sequence[Any], sign: int) -> None:
    target = totals.setdefault(key, [0.0] * len(values))
    for i, value in enumerate(values):
        target[i] += sign * float(value or 0.0)


def _merge(connection: Connection, table: sa.Table, experiment_id: str, keys: Sequence[str], columns: Sequence[str],
           deltas: dict[tuple[Any, ...], list[float]], integers: Sequence[str]) -> None:
    """Add ``deltas`` to a small totals table of the experiment (read, add, write back: a few hundred rows)."""
    if not deltas:
        return
    current = {tuple(r[k] for k in keys): [r[c] for c in columns]
               for r in connection.execute(sa.select(table).where(table.c.experiment_id == experiment_id)).mappings()}
    for key, delta in deltas.items():
        before = current.get(key)
        merged = [(before[i] if before else 0.0) + delta[i] for i in range(len(columns))]
        row = {"experiment_id": experiment_id, **dict(zip(keys, key, strict=True)),
               **{c: (round(v) if c in integers else v) for c, v in zip(columns, merged, strict=True)}}
        if before is None:
            connection.execute(table.insert(), [row])
        else:
            connection.execute(table.update().where(table.c.experiment_id == experiment_id,
                                                    *(table.c[k] == v for k, v in zip(keys, key, strict=True)))
                               .values({c: row[c] for c in columns}))


