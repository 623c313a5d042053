"""Incremental A/B aggregation: fold the log's new rows and labels into small state beside it, then analyse
from that state the same ``ExperimentAggregates`` as ``ab_aggregate.aggregate_experiment``.

``aggregate_experiment`` re-reads every row of the experiment each day (tens of seconds at 10M rows).
``fold_experiment`` reads only what arrived since the last fold, and ``ab_rollup_read.aggregate_from_rollup`` reads tables of
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

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tl_platform.experiments.ab_aggregate import (
    ARMS,
    P99,
    _as_date,
    _day,
)
from tl_platform.experiments.ab_rollup_state import (
    _DAILY,
    _SUMS,
    FEEDBACK_SETTLE,
    METRICS,
    TAIL_KEEP,
    TAIL_MIN_ROWS,
    TAIL_PRUNE,
    FoldReport,
    RollupError,
    _add,
    _begin_locked,
    _daily_contributions,
    _labelled_rows,
    _merge,
    _rollup,
    _slice_contributions,
    _temporary,
    _upsert,
)
from tl_platform.experiments.ab_spec import ExperimentSpec, check_name
from tl_platform.serving.log_readers import SERVED, as_utc
from tl_platform.serving.log_schema import LogTables, RollupTables

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


def fold_for_spec(engine: Engine, tables: LogTables, spec: ExperimentSpec, start: datetime, up_to: datetime,
                  feedback_up_to: datetime | None = None) -> FoldReport:
    """``fold_experiment`` with the spec's experiment id and slice keys."""
    return fold_experiment(engine, tables, spec.experiment_id, start, up_to, spec.slices, feedback_up_to)


