"""Incremental A/B aggregation: fold the log's new rows and labels into small state beside it, then analyse
from that state the same ``ExperimentAggregates`` as ``ab_aggregate.aggregate_experiment``.

``aggregate_experiment`` re-reads every row of the experiment each day (tens of seconds at 10M rows).
``fold_experiment`` reads only what arrived since the last fold, and ``aggregate_from_rollup`` reads tables of
a few hundred rows. The state (revision 0004, ``log_schema.RollupTables``):

- per (arm, unit, UTC day) and per (slice value, arm, unit): the unit's labelled / correct / outcome sums, for
  both metric kinds, so a late label can update one unit exactly;
- per (metric, day, arm): the daily and cumulative sufficient statistics, and per (metric, slice value, arm)
  the slice statistics. The fold keeps these current by subtracting the touched units' contributions computed
  from their old state and adding those from their new state, with the same SQL (``ab_aggregate._daily_part``)
  that ``aggregate_experiment`` runs over the whole log: the results agree to float rounding (about 1e-12);
- exposure: the arms each unit was seen in, and the counters of units per arm and in both arms;
- operations per (day, arm), and every latency at or above a per-arm threshold (the "tail", kept at about four
  times the values the p99 needs), so the p99 is read exactly, as ``aggregate_experiment`` computes it.

What is folded. Served rows with ``start <= ts < up_to`` (a fold never moves this watermark back), with all
their feedback recorded before ``feedback_up_to``; then feedback recorded in ``[previous feedback_up_to,
feedback_up_to)`` for rows folded earlier (late labels). Late labels count on the day their row was *served*,
as in ``aggregate_experiment``: the cumulative series of past days therefore change when a late label arrives
(the series is "as known now", not "as observed then"); an analysis stored earlier keeps the numbers of its
time. Two limits, both documented choices: served rows committed after a fold with ``ts`` below its
``up_to`` are not seen (fold a day once it is complete, as ``ab_decision`` does at 02:30 the next day); and a
label recorded after a fold with an explicit ``ts`` below that fold's ``feedback_up_to`` (a replay of old
events) is detected by the count of feedback rows below the watermark, and the experiment is then refolded
from scratch (``FoldReport.refolded`` says why). ``feedback_up_to`` defaults to the clock minus
``FEEDBACK_SETTLE``, so a label being written at the moment of the fold is not skipped.

Concurrency: the fold runs in one transaction under the experiment's lock (SQLite: ``BEGIN IMMEDIATE``, the
database's one write lock; Postgres: a transaction-level advisory lock per log and experiment), so two folds
at once run one after the other and the second finds nothing new. Re-running a fold folds nothing. On SQLite
that lock is the log's only write lock: the log's writer waits while a fold runs (its busy timeout is 30 s; a
day of 714,285 rows folded in about 20 s on 2 cores, see bench/ab_analysis.py), so fold once a day, off-peak.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from tl_platform.experiments.ab_aggregate import (
    ARMS,
    P99,
    ArmOperations,
    ExperimentAggregates,
    _as_date,
    _by_day,
    _daily_part,
    _day,
    _slice_value,
)
from tl_platform.experiments.ab_spec import ExperimentSpec, MetricKind, check_name
from tl_platform.experiments.ab_stats import ArmStats
from tl_platform.serving.log_readers import SERVED, as_utc
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


# -- the fold -------------------------------------------------------------------------------------------------


def fold_experiment(
    engine: Engine,
    tables: LogTables,
    experiment_id: str,
    start: datetime,
    up_to: datetime,
    slice_keys: Sequence[str] = (),
    feedback_up_to: datetime | None = None,
) -> FoldReport:
    """Fold the experiment's served rows with ``start <= ts < up_to`` and its feedback recorded before
    ``feedback_up_to`` (default: now minus ``FEEDBACK_SETTLE``) into the rollup, folding only what is new.

    ``start`` and ``slice_keys`` are fixed by the first fold; a later fold with others raises RollupError
    (``reset_rollup`` forgets the state). Naive times are UTC.
    """
    rollup = _rollup(tables)
    for key in slice_keys:
        check_name("slice key", key)
    start, up_to = as_utc(start), as_utc(up_to)
    feedback_to = as_utc(feedback_up_to) if feedback_up_to is not None else datetime.now(UTC) - FEEDBACK_SETTLE
    if up_to <= start:
        raise RollupError(f"up_to must be after start, got start={start.isoformat()} up_to={up_to.isoformat()}")
    with engine.connect() as connection:
        _begin_locked(connection, rollup.state, experiment_id)
        state = connection.execute(sa.select(rollup.state).where(rollup.state.c.experiment_id == experiment_id)
                                   ).mappings().first()
        refolded = None
        if state is not None:
            _check_same(state, experiment_id, start, slice_keys)
            if feedback_to < as_utc(state["feedback_up_to"]):
                raise RollupError(
                    f"feedback_up_to {feedback_to.isoformat()} is before the feedback already folded for "
                    f"{experiment_id!r} (up to {as_utc(state['feedback_up_to']).isoformat()}); pass a later time")
            seen = _feedback_rows(connection, tables, as_utc(state["feedback_up_to"]))
            if seen != state["feedback_rows"]:
                refolded = (f"{seen - state['feedback_rows']:+d} feedback rows recorded with a ts before the last "
                            f"fold's feedback watermark {as_utc(state['feedback_up_to']).isoformat()}")
                reset_state(connection, rollup, experiment_id)
                state = None
        report = _fold(connection, tables, rollup, experiment_id, start, up_to, tuple(slice_keys), feedback_to,
                       state, refolded)
        connection.commit()
    return report


def _check_same(state: Any, experiment_id: str, start: datetime, slice_keys: Sequence[str]) -> None:
    folded_keys = json.loads(state["slice_keys"])
    if as_utc(state["start"]) != start or folded_keys != list(slice_keys):
        raise RollupError(
            f"experiment {experiment_id!r} was folded from {as_utc(state['start']).isoformat()} with slice keys "
            f"{folded_keys}, not from {start.isoformat()} with {list(slice_keys)}; reset_rollup to fold it anew")


def _feedback_rows(connection: Connection, tables: LogTables, before: datetime) -> int:
    f = tables.feedback
    return int(connection.execute(sa.select(sa.func.count()).select_from(f).where(f.c.ts < before)).scalar_one())


def _fold(connection: Connection, tables: LogTables, rollup: RollupTables, experiment_id: str, start: datetime,
          up_to: datetime, slice_keys: tuple[str, ...], feedback_to: datetime, state: Any,
          refolded: str | None) -> FoldReport:
    p, f = tables.predictions, tables.feedback
    served_from = as_utc(state["served_up_to"]) if state is not None else start
    served_to = max(up_to, served_from)
    feedback_from = as_utc(state["feedback_up_to"]) if state is not None else None
    temporary = _temporary(len(slice_keys))
    for table in temporary.values():
        table.create(connection)
    raw = temporary["raw"]
    names = ["variant", "unit_id", "day", *(f"s{i}" for i in range(len(slice_keys))), *_SUMS]
    new_rows = [p.c.ts >= served_from, p.c.ts < served_to]
    # (1) new served rows with all their feedback so far; (2) late labels of rows folded before
    connection.execute(raw.insert().from_select(names, _labelled_rows(
        connection, tables, experiment_id, slice_keys, [*new_rows, f.c.ts < feedback_to])))
    if feedback_from is not None:
        connection.execute(raw.insert().from_select(names, _labelled_rows(
            connection, tables, experiment_id, slice_keys,
            [p.c.ts >= start, p.c.ts < served_from, f.c.ts >= feedback_from, f.c.ts < feedback_to])))
    sums = [sa.func.sum(raw.c[name]).label(name) for name in _SUMS]
    connection.execute(temporary["unit_days"].insert().from_select(
        ["variant", "unit_id", "day", *_SUMS],
        sa.select(raw.c.variant, raw.c.unit_id, raw.c.day, *sums).group_by(raw.c.variant, raw.c.unit_id, raw.c.day)))
    for i, key in enumerate(slice_keys):
        value = raw.c[f"s{i}"]
        connection.execute(temporary["unit_slices"].insert().from_select(
            ["slice_key", "slice_value", "variant", "unit_id", *_SUMS],
            sa.select(sa.literal(key, sa.String), value, raw.c.variant, raw.c.unit_id, *sums)
            .where(value.is_not(None)).group_by(value, raw.c.variant, raw.c.unit_id)))
    touched = temporary["unit_days"]
    connection.execute(temporary["affected"].insert().from_select(
        ["variant", "unit_id"], sa.select(touched.c.variant, touched.c.unit_id).distinct()))
    _analyze(connection, temporary["unit_days"], temporary["unit_slices"], temporary["affected"])
    updated = int(connection.execute(sa.select(sa.func.count()).select_from(touched)).scalar_one())

    # the touched units' old contributions out, their state updated, their new contributions in
    daily: dict[tuple[Any, ...], list[float]] = {}
    slices: dict[tuple[Any, ...], list[float]] = {}
    for sign in (-1, 1):
        if sign == 1:
            _upsert_sums(connection, rollup.unit_days, touched, experiment_id, ["variant", "unit_id", "day"])
            _upsert_sums(connection, rollup.unit_slices, temporary["unit_slices"], experiment_id,
                         ["slice_key", "slice_value", "variant", "unit_id"])
        for metric in METRICS:
            for _, variant, _, day, *values in _daily_contributions(connection, rollup, temporary, experiment_id,
                                                                     metric):
                _add(daily, (metric, _as_date(day), variant), values, sign)
            for variant, key, value, *values in _slice_contributions(connection, rollup, temporary, experiment_id,
                                                                     metric):
                _add(slices, (metric, key, value, variant), values, sign)
    _merge(connection, rollup.daily, experiment_id, ["metric", "day", "variant"], _DAILY, daily,
           integers=("n", "new_units"))
    _merge(connection, rollup.slices, experiment_id, ["metric", "slice_key", "slice_value", "variant"],
           ("n", "total", "total_sq"), slices, integers=("n",))

    _analyze(connection, rollup.unit_days, rollup.unit_slices)
    counters = _fold_exposure(connection, tables, rollup, temporary, experiment_id, new_rows)
    served_rows = _fold_operations(connection, tables, rollup, experiment_id, new_rows)
    tail_min = {arm: state[f"{arm}_tail_min"] if state is not None else None for arm in ARMS}
    for arm in ARMS:
        tail_min[arm] = _fold_tail(connection, tables, rollup, experiment_id, arm, start, new_rows, served_to,
                                   tail_min[arm])
    values = {
        "start": start, "slice_keys": json.dumps(list(slice_keys)), "served_up_to": served_to,
        "feedback_up_to": feedback_to, "feedback_rows": _feedback_rows(connection, tables, feedback_to),
        **{name: (state[name] if state is not None else 0) + delta for name, delta in counters.items()},
        **{f"{arm}_tail_min": tail_min[arm] for arm in ARMS},
    }
    if state is None:
        connection.execute(rollup.state.insert(), [{"experiment_id": experiment_id, **values}])
    else:
        connection.execute(rollup.state.update().where(rollup.state.c.experiment_id == experiment_id).values(values))
    for table in reversed(list(temporary.values())):
        table.drop(connection)
    return FoldReport(experiment_id, served_to, feedback_to, served_rows, updated, refolded)


def _analyze(connection: Connection, *tables: sa.Table) -> None:
    """Postgres plans joins from table statistics, and temporary or freshly filled tables have none (it then
    guesses badly: a nested loop over 100,000s of rows); SQLite plans these joins from the primary keys."""
    if connection.dialect.name == "postgresql":
        for table in tables:
            connection.exec_driver_sql(f"ANALYZE {connection.dialect.identifier_preparer.format_table(table)}")


def _upsert_sums(connection: Connection, target: sa.Table, source: sa.Table, experiment_id: str,
                 keys: list[str]) -> None:
    select = (sa.select(sa.literal(experiment_id, sa.String), *(source.c[k] for k in keys),
                        *(source.c[s] for s in _SUMS))
              .where(sa.true()))  # SQLite: INSERT ... SELECT ... ON CONFLICT needs a WHERE to parse
    insert = _upsert(connection, target).from_select(["experiment_id", *keys, *_SUMS], select)
    connection.execute(insert.on_conflict_do_update(
        index_elements=["experiment_id", *keys],
        set_={s: target.c[s] + insert.excluded[s] for s in _SUMS}))


def _fold_exposure(connection: Connection, tables: LogTables, rollup: RollupTables, temporary: dict[str, sa.Table],
                   experiment_id: str, new_rows: list[sa.ColumnElement[bool]]) -> dict[str, int]:
    """Which arms the new rows' units were seen in, and the change of the unit counters it makes."""
    p, new, units = tables.predictions, temporary["units"], rollup.units
    seen = [sa.func.max(sa.case((p.c.variant == arm, 1), else_=0)).label(arm) for arm in ARMS]
    connection.execute(new.insert().from_select(
        ["unit_id", *ARMS], sa.select(p.c.unit_id, *seen)
        .where(p.c.experiment_id == experiment_id, p.c.role == SERVED, p.c.unit_id.is_not(None), *new_rows)
        .group_by(p.c.unit_id)))
    _analyze(connection, new, units)
    old = {arm: sa.func.coalesce(units.c[arm], 0) for arm in ARMS}
    now = {arm: old[arm] + new.c[arm] - old[arm] * new.c[arm] for arm in ARMS}  # OR of 0/1 flags
    champion, challenger, both = tuple(connection.execute(
        sa.select(*(sa.func.coalesce(sa.func.sum(now[arm] - old[arm]), 0) for arm in ARMS),
                  sa.func.coalesce(sa.func.sum(now["champion"] * now["challenger"]
                                               - old["champion"] * old["challenger"]), 0))
        .select_from(new.outerjoin(units, sa.and_(units.c.experiment_id == experiment_id,
                                                  units.c.unit_id == new.c.unit_id)))).one())
    insert = _upsert(connection, units).from_select(
        ["experiment_id", "unit_id", *ARMS],
        sa.select(sa.literal(experiment_id, sa.String), new.c.unit_id, *(new.c[arm] for arm in ARMS)).where(sa.true()))
    connection.execute(insert.on_conflict_do_update(
        index_elements=["experiment_id", "unit_id"],
        set_={arm: units.c[arm] + insert.excluded[arm] - units.c[arm] * insert.excluded[arm] for arm in ARMS}))
    return {"champion_units": int(champion), "challenger_units": int(challenger), "units_in_both_arms": int(both)}


def _fold_operations(connection: Connection, tables: LogTables, rollup: RollupTables, experiment_id: str,
                     new_rows: list[sa.ColumnElement[bool]]) -> int:
    p = tables.predictions
    day = _day(connection, p.c.ts)
    rows = connection.execute(
        sa.select(day, p.c.variant, sa.func.count(), sa.func.sum(sa.case((p.c.unit_id.is_(None), 1), else_=0)),
                  sa.func.sum(sa.case((p.c.error.is_not(None), 1), else_=0)), sa.func.sum(p.c.latency_ms))
        .where(p.c.experiment_id == experiment_id, p.c.role == SERVED, *new_rows).group_by(day, p.c.variant)).all()
    deltas: dict[tuple[Any, ...], list[float]] = {}
    for day_value, variant, *values in rows:
        _add(deltas, (_as_date(day_value), variant), values, 1)
    _merge(connection, rollup.operations, experiment_id, ["day", "variant"],
           ("rows", "rows_without_unit", "errors", "latency_sum"), deltas, integers=("rows", "rows_without_unit", "errors"))
    return sum(int(r[2]) for r in rows)


def _needed(rows: int) -> int:
    """How many of the largest latencies the p99 (linear interpolation at rank 0.99 (n - 1)) reads."""
    return rows - math.floor(P99 * (rows - 1)) if rows else 0


def _fold_tail(connection: Connection, tables: LogTables, rollup: RollupTables, experiment_id: str, arm: str,
               start: datetime, new_rows: list[sa.ColumnElement[bool]], served_to: datetime,
               tail_min: float | None) -> float | None:
    """Keep in the tail every latency of the arm at or above ``tail_min`` (returned, maybe raised): then the
    tail holds the top values exactly, and the p99 is exact whenever the tail has at least ``_needed`` rows."""
    p, tail, ops = tables.predictions, rollup.latency_tail, rollup.operations
    rows = int(connection.execute(sa.select(sa.func.coalesce(sa.func.sum(ops.c.rows), 0))
                                  .where(ops.c.experiment_id == experiment_id, ops.c.variant == arm)).scalar_one())
    if rows == 0:
        return tail_min
    need = _needed(rows)
    keep = max(TAIL_KEEP * need, TAIL_MIN_ROWS)
    of_arm = [tail.c.experiment_id == experiment_id, tail.c.variant == arm]
    served = [p.c.experiment_id == experiment_id, p.c.role == SERVED, p.c.variant == arm]

    def insert(where: list[sa.ColumnElement[bool]], at_least: float) -> None:
        connection.execute(tail.insert().from_select(
            ["experiment_id", "variant", "latency_ms"],
            sa.select(sa.literal(experiment_id, sa.String), sa.literal(arm, sa.String), p.c.latency_ms)
            .where(*served, *where, p.c.latency_ms >= at_least)))

    def count() -> int:
        return int(connection.execute(sa.select(sa.func.count()).select_from(tail).where(*of_arm)).scalar_one())

    if tail_min is not None:
        insert(new_rows, tail_min)
        held = count()
        if held >= need:
            if held > TAIL_PRUNE * max(need, TAIL_MIN_ROWS):  # cut back to `keep` values (and their ties)
                tail_min = float(connection.execute(sa.select(tail.c.latency_ms).where(*of_arm)
                                                    .order_by(tail.c.latency_ms.desc()).limit(1).offset(keep - 1)
                                                    ).scalar_one())
                connection.execute(tail.delete().where(*of_arm, tail.c.latency_ms < tail_min))
            return tail_min
    # first fold, or the tail fell short (latencies dropped below the threshold): rebuild it from the log
    window = [p.c.ts >= start, p.c.ts < served_to]
    threshold = connection.execute(sa.select(p.c.latency_ms).where(*served, *window)
                                   .order_by(p.c.latency_ms.desc()).limit(1).offset(keep - 1)).scalar()
    if threshold is None:  # fewer rows than `keep`: the tail is every latency of the arm
        threshold = connection.execute(sa.select(sa.func.min(p.c.latency_ms)).where(*served, *window)).scalar_one()
    connection.execute(tail.delete().where(*of_arm))
    insert(window, float(threshold))
    return float(threshold)


def reset_state(connection: Connection, rollup: RollupTables, experiment_id: str) -> None:
    """Delete the experiment's rollup state (in the caller's transaction)."""
    for table in (rollup.unit_days, rollup.unit_slices, rollup.units, rollup.daily, rollup.slices,
                  rollup.operations, rollup.latency_tail, rollup.state):
        connection.execute(table.delete().where(table.c.experiment_id == experiment_id))


def reset_rollup(engine: Engine, tables: LogTables, experiment_id: str) -> None:
    """Forget the experiment's rollup, so the next fold starts from the log (another start or slice keys)."""
    rollup = _rollup(tables)
    with engine.connect() as connection:
        _begin_locked(connection, rollup.state, experiment_id)
        reset_state(connection, rollup, experiment_id)
        connection.commit()


# -- the analysis ---------------------------------------------------------------------------------------------


def aggregate_from_rollup(
    engine: Engine,
    tables: LogTables,
    experiment_id: str,
    start: datetime,
    end: datetime,
    metric: MetricKind,
    slice_keys: Sequence[str] = (),
) -> ExperimentAggregates:
    """``aggregate_experiment``'s result for ``[start, end)``, read from the rollup: ``start`` must be the folds'
    start and ``end`` the served watermark of the last fold (``fold_experiment(..., up_to=end)``), and
    ``slice_keys`` among the folded ones; anything else raises RollupError saying what differs."""
    rollup = _rollup(tables)
    if metric not in METRICS:
        raise RollupError(f"metric: must be one of {list(METRICS)}, got {metric!r}")
    start, end = as_utc(start), as_utc(end)
    with engine.connect() as connection:
        state = connection.execute(sa.select(rollup.state).where(rollup.state.c.experiment_id == experiment_id)
                                   ).mappings().first()
        if state is None:
            raise RollupError(f"experiment {experiment_id!r} has not been folded: call fold_experiment first")
        folded_keys = json.loads(state["slice_keys"])
        if as_utc(state["start"]) != start or as_utc(state["served_up_to"]) != end:
            raise RollupError(
                f"experiment {experiment_id!r} is folded for [{as_utc(state['start']).isoformat()}, "
                f"{as_utc(state['served_up_to']).isoformat()}), not [{start.isoformat()}, {end.isoformat()}): fold "
                "up to the window's end first (or use aggregate_experiment for a past window)")
        if not set(slice_keys) <= set(folded_keys):
            raise RollupError(f"slice keys {sorted(set(slice_keys) - set(folded_keys))} were not folded for "
                              f"{experiment_id!r} (folded: {folded_keys})")
        d, s, o = rollup.daily, rollup.slices, rollup.operations
        daily_rows = connection.execute(
            sa.select(d.c.variant, d.c.day, *(d.c[c] for c in _DAILY))
            .where(d.c.experiment_id == experiment_id, d.c.metric == metric, d.c.n > 0)).all()
        slice_rows = connection.execute(
            sa.select(s.c.slice_key, s.c.slice_value, s.c.variant, s.c.n, s.c.total, s.c.total_sq)
            .where(s.c.experiment_id == experiment_id, s.c.metric == metric, s.c.n > 0,
                   s.c.slice_key.in_(list(slice_keys)))).all()
        operations = connection.execute(
            sa.select(o.c.variant, sa.func.sum(o.c.rows), sa.func.sum(o.c.rows_without_unit), sa.func.sum(o.c.errors),
                      sa.func.sum(o.c.latency_sum))
            .where(o.c.experiment_id == experiment_id).group_by(o.c.variant)).all()
        by_arm = {variant: (int(rows), int(without), int(errors), float(latency))
                  for variant, rows, without, errors, latency in operations}
        arms = {arm: by_arm.get(arm, (0, 0, 0, 0.0)) for arm in ARMS}
        result_operations = {
            arm: ArmOperations(rows, errors, latency / rows if rows else None,
                               _tail_p99(connection, rollup, experiment_id, arm, rows))
            for arm, (rows, _, errors, latency) in arms.items()}
    # float rounding of the subtract-and-add updates must not make a sum of squares negative
    cumulative, daily = _by_day([(variant, day, n, total, max(total_sq, 0.0), new, change, change_sq)
                                 for variant, day, n, total, total_sq, new, change, change_sq in daily_rows])
    slices: dict[tuple[str, str], dict[str, ArmStats]] = {}
    for key, value, variant, n, total, total_sq in slice_rows:
        slices.setdefault((key, str(value)), {})[variant] = ArmStats(int(n), float(total), max(float(total_sq), 0.0))
    empty = ArmStats(0, 0.0, 0.0)
    return ExperimentAggregates(
        experiment_id, metric, start, end, cumulative, daily,
        slices={key: (arms_.get("champion", empty), arms_.get("challenger", empty))
                for key, arms_ in sorted(slices.items())},
        units={"champion": int(state["champion_units"]), "challenger": int(state["challenger_units"])},
        units_in_both_arms=int(state["units_in_both_arms"]),
        rows_without_unit=sum(without for _, without, _, _ in arms.values()),
        operations=result_operations,
    )


def _tail_p99(connection: Connection, rollup: RollupTables, experiment_id: str, arm: str, rows: int) -> float | None:
    """The p99 as ``ab_aggregate._p99`` computes it, read from the tail (which holds the top ``_needed`` values)."""
    if rows == 0:
        return None
    tail = rollup.latency_tail
    of_arm = [tail.c.experiment_id == experiment_id, tail.c.variant == arm]
    rank = P99 * (rows - 1)
    lower = math.floor(rank)
    if lower >= rows - 1:
        return float(connection.execute(sa.select(sa.func.max(tail.c.latency_ms)).where(*of_arm)).scalar_one())
    values = connection.execute(sa.select(tail.c.latency_ms).where(*of_arm).order_by(tail.c.latency_ms.desc())
                                .limit(2).offset(rows - 2 - lower)).scalars().all()
    if len(values) != 2:
        raise RollupError(f"the latency tail of {arm!r} in {experiment_id!r} holds too few values for the p99 of "
                          f"{rows} rows: the rollup is inconsistent; reset_rollup and fold again")
    above, below = (float(v) for v in values)
    return below + (rank - lower) * (above - below)


def fold_for_spec(engine: Engine, tables: LogTables, spec: ExperimentSpec, start: datetime, up_to: datetime,
                  feedback_up_to: datetime | None = None) -> FoldReport:
    """``fold_experiment`` with the spec's experiment id and slice keys."""
    return fold_experiment(engine, tables, spec.experiment_id, start, up_to, spec.slices, feedback_up_to)


def rollup_for_spec(engine: Engine, tables: LogTables, spec: ExperimentSpec, start: datetime,
                    end: datetime) -> ExperimentAggregates:
    """``aggregate_from_rollup`` with the spec's experiment id, metric kind and slice keys."""
    return aggregate_from_rollup(engine, tables, spec.experiment_id, start, end, spec.primary.kind, spec.slices)


__all__ = ["FEEDBACK_SETTLE", "FoldReport", "RollupError", "aggregate_from_rollup", "fold_experiment",
           "fold_for_spec", "reset_rollup", "rollup_for_spec"]
