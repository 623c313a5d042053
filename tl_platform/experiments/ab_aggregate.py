"""An experiment's sufficient statistics, aggregated in the prediction log's database (SQLAlchemy Core).

The unit of analysis is the unit id: one unit's requests share a user, a device, a habit, so they are not
independent, and a test that counted requests would understate the variance. The experiment's served rows
are therefore grouped per unit in SQL (per-unit accuracy = correct labels / labelled items of that unit, or
the unit's mean ``outcome``), and only n, sum and sum of squares over units per arm, day and slice leave the
database. Rows without a unit id cannot be assigned to one randomised unit: they are excluded and counted.

Three statements. (1) The metric: one pass over predictions joined to feedback groups by (variant, unit, UTC
day, slice values) into a materialised CTE, which both the daily and the per-slice statistics read (a UNION
ALL), so adding a slice key adds no pass over the log. Cumulative statistics per day (for the sequential test)
come from it too: a unit's value as of day D is its correct / labelled up to D (window sums over its days);
on day D it contributes the change of its value since its previous active day (value - previous,
value^2 - previous^2, and one unit on its first day), and the running totals of those changes over days are
the cumulative n, sum and sum of squares. (2) Exposure: one pass grouped by unit id gives units per arm (for
SRM), units seen in both arms, rows without a unit, errors and latency. (3) The p99 latency per arm:
``percentile_cont(0.99)`` on Postgres; SQLite has no percentile, so the same linear interpolation between the
two order statistics around rank 0.99 (n - 1), read by ``ORDER BY latency_ms DESC LIMIT 2 OFFSET k`` (SQLite's
sorter then keeps only the top k + 2 rows, about 1% of the arm).

Days are UTC (Postgres: ``timezone('UTC', ts)``, never the session's zone; SQLite stores UTC text). Slices
read a key of the ``attributes`` JSON (SQLite ``json_extract``, Postgres ``->>`` on jsonb); rows without the
key are left out of that slice's statistics. Cost: on 10M rows SQLite sorts by unit (no hash aggregation), so
an analysis takes tens of seconds on 2 cores; see bench/ab_analysis.py for the figures and the indexes that help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine

from tl_platform.experiments.ab_sequential import DailyArms
from tl_platform.experiments.ab_spec import ExperimentSpec, MetricKind, check_name
from tl_platform.experiments.ab_stats import ArmStats
from tl_platform.serving.log_readers import SERVED, as_utc
from tl_platform.serving.log_schema import LogTables

ARMS = ("champion", "challenger")
P99 = 0.99


@dataclass(frozen=True)
class ArmOperations:
    """Operational guardrail inputs of one arm, over its served rows (items), with or without a unit id."""

    rows: int
    errors: int
    mean_latency_ms: float | None
    p99_latency_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.rows if self.rows else None


@dataclass(frozen=True)
class ExperimentAggregates:
    """Everything the analysis of one experiment window needs, as sufficient statistics.

    ``cumulative``: per UTC day, each arm's unit statistics over every row up to the end of that day (the
    last entry is the whole window). ``daily``: per day, unit statistics of that day's rows alone (daily effect
    bands). ``slices``: ``(key, value) -> (champion, challenger)`` over the whole window. ``units``: units seen
    per arm (exposure, labelled or not) for the SRM check; ``units_in_both_arms`` should be 0 (a unit that
    switched arms: a changed salt or split). Arms with no rows are present with zero statistics.
    """

    experiment_id: str
    metric: MetricKind
    start: datetime
    end: datetime
    cumulative: tuple[DailyArms, ...]
    daily: tuple[DailyArms, ...]
    slices: dict[tuple[str, str], tuple[ArmStats, ArmStats]]
    units: dict[str, int]
    units_in_both_arms: int
    rows_without_unit: int
    operations: dict[str, ArmOperations]

    @property
    def overall(self) -> tuple[ArmStats, ArmStats]:
        """(champion, challenger) over the whole window."""
        if not self.cumulative:
            return ArmStats(0, 0.0, 0.0), ArmStats(0, 0.0, 0.0)
        return self.cumulative[-1].champion, self.cumulative[-1].challenger


# -- SQL building blocks --------------------------------------------------------------------------------------


def _day(engine: Engine | Connection, ts: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.func.timezone("UTC", ts), sa.Date)
    return sa.func.substr(ts, 1, 10)  # SQLite: stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _slice_value(engine: Engine | Connection, attributes: sa.ColumnElement[Any], key: str) -> sa.ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return sa.cast(attributes, JSONB).op("->>")(key)
    return sa.func.json_extract(attributes, f'$."{key}"')


def _served(tables: LogTables, experiment_id: str, start: datetime, end: datetime) -> list[sa.ColumnElement[bool]]:
    p = tables.predictions
    return [p.c.experiment_id == experiment_id, p.c.role == SERVED, p.c.ts >= as_utc(start), p.c.ts < as_utc(end)]


def _metric_terms(tables: LogTables, metric: MetricKind) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any],
                                                                  sa.ColumnElement[bool]]:
    """(numerator, denominator, condition) per feedback row: correct labels of labelled items, or outcomes."""
    p, f = tables.predictions, tables.feedback
    if metric == "proportion":
        correct = sa.case((f.c.label == p.c.label, sa.literal(1.0, sa.Float)), else_=sa.literal(0.0, sa.Float))
        return correct, sa.literal(1.0, sa.Float), f.c.label.is_not(None)
    return sa.cast(f.c.outcome, sa.Float), sa.literal(1.0, sa.Float), f.c.outcome.is_not(None)


def _unit_days(connection: Connection, tables: LogTables, metric: MetricKind,
               conditions: list[sa.ColumnElement[bool]], slice_keys: Sequence[str]) -> sa.CTE:
    """The one pass over predictions joined to feedback: per (variant, unit, day, slice values) the sums of the
    unit's metric numerator and denominator. Materialised once; the daily and slice statistics read it."""
    p, f = tables.predictions, tables.feedback
    numerator, denominator, has_metric = _metric_terms(tables, metric)
    day = _day(connection, p.c.ts)
    slices = [_slice_value(connection, p.c.attributes, key) for key in slice_keys]
    query = (
        sa.select(p.c.variant, p.c.unit_id, day.label("day"), *(s.label(f"s{i}") for i, s in enumerate(slices)),
                  sa.func.sum(numerator).label("num"), sa.func.sum(denominator).label("den"))
        .join(f, sa.and_(f.c.request_id == p.c.request_id, f.c.item_index == p.c.item_index))
        .where(*conditions, p.c.unit_id.is_not(None), has_metric)
        .group_by(p.c.variant, p.c.unit_id, day, *slices)
    )
    return query.cte("unit_days").prefix_with("MATERIALIZED") if slices else query.cte("unit_days")


def _daily_part(connection: Connection, unit_days: sa.CTE, regroup: bool) -> sa.Select[Any]:
    """Per (variant, day): today's unit statistics, new units, and the change of the units' values to date."""
    u: sa.CTE | sa.Subquery = unit_days
    if regroup:  # slice columns split a unit's day into several rows: add them up again
        u = (sa.select(u.c.variant, u.c.unit_id, u.c.day, sa.func.sum(u.c.num).label("num"),
                       sa.func.sum(u.c.den).label("den"))
             .group_by(u.c.variant, u.c.unit_id, u.c.day).subquery("unit_day"))
    unit = [u.c.variant, u.c.unit_id]
    num_to_date = sa.over(sa.func.sum(u.c.num), partition_by=unit, order_by=u.c.day, rows=(None, 0))
    den_to_date = sa.over(sa.func.sum(u.c.den), partition_by=unit, order_by=u.c.day, rows=(None, 0))
    running = sa.select(
        u.c.variant, u.c.day, (u.c.num / u.c.den).label("today"), (num_to_date / den_to_date).label("value"),
        # the unit's value before today: its sums to date minus today's; NULL on its first day
        ((num_to_date - u.c.num) / sa.func.nullif(den_to_date - u.c.den, 0)).label("previous"),
    ).subquery("running")
    value, previous, today = running.c.value, running.c.previous, running.c.today
    day = sa.cast(running.c.day, sa.String) if connection.dialect.name == "postgresql" else running.c.day
    return (
        sa.select(
            sa.literal("day").label("part"), running.c.variant, sa.cast(sa.null(), sa.String).label("slice_key"),
            day.label("label"), sa.func.count().label("n"), sa.func.sum(today).label("total"),
            sa.func.sum(today * today).label("total_sq"),
            sa.func.sum(sa.case((previous.is_(None), 1), else_=0)).label("new_units"),
            sa.func.sum(value - sa.func.coalesce(previous, 0.0)).label("change"),
            sa.func.sum(value * value - sa.func.coalesce(previous * previous, 0.0)).label("change_sq"),
        )
        .group_by(running.c.variant, running.c.day)
    )


def _slice_part(unit_days: sa.CTE, index: int, key: str) -> sa.Select[Any]:
    """Per (variant, slice value): unit statistics of the rows carrying that value of ``key``."""
    u, value = unit_days, unit_days.c[f"s{index}"]
    units = (sa.select(u.c.variant, value.label("value"), (sa.func.sum(u.c.num) / sa.func.sum(u.c.den)).label("metric"))
             .where(value.is_not(None)).group_by(u.c.variant, value, u.c.unit_id).subquery(f"slice_{index}"))
    metric = units.c.metric
    no_float = sa.cast(sa.null(), sa.Float)
    return (
        sa.select(sa.literal("slice"), units.c.variant, sa.literal(key), sa.cast(units.c.value, sa.String),
                  sa.func.count(), sa.func.sum(metric), sa.func.sum(metric * metric), sa.cast(sa.null(), sa.Integer),
                  no_float, no_float)
        .group_by(units.c.variant, units.c.value)
    )


def _exposure_query(tables: LogTables, conditions: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
    """One pass per unit (NULL: the rows without a unit id): rows, errors and latency per arm, and which arms
    each unit was seen in; summed over units without another sort."""
    p = tables.predictions
    per_arm = []
    for arm in ARMS:
        in_arm = p.c.variant == arm
        per_arm += [sa.func.sum(sa.case((in_arm, 1), else_=0)).label(f"{arm}_rows"),
                    sa.func.sum(sa.case((sa.and_(in_arm, p.c.error.is_not(None)), 1), else_=0)).label(f"{arm}_errors"),
                    sa.func.sum(sa.case((in_arm, p.c.latency_ms), else_=0.0)).label(f"{arm}_latency")]
    units = sa.select(p.c.unit_id, *per_arm).where(*conditions).group_by(p.c.unit_id).subquery("units")
    has_unit = units.c.unit_id.is_not(None)
    rows = {arm: units.c[f"{arm}_rows"] for arm in ARMS}
    return sa.select(
        *(sa.func.coalesce(sa.func.sum(units.c[f"{arm}_{what}"]), 0) for arm in ARMS
          for what in ("rows", "errors", "latency")),
        *(sa.func.coalesce(sa.func.sum(sa.case((sa.and_(has_unit, rows[arm] > 0), 1), else_=0)), 0) for arm in ARMS),
        sa.func.coalesce(sa.func.sum(sa.case((sa.and_(has_unit, rows["champion"] > 0, rows["challenger"] > 0), 1),
                                             else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((has_unit, 0), else_=rows["champion"] + rows["challenger"])), 0),
    )


def _arms(rows: dict[str, ArmStats]) -> tuple[ArmStats, ArmStats]:
    empty = ArmStats(0, 0.0, 0.0)
    return rows.get("champion", empty), rows.get("challenger", empty)


def _p99(connection: Connection, tables: LogTables, conditions: list[sa.ColumnElement[bool]], arm: str,
         rows: int) -> float | None:
    p = tables.predictions
    if rows == 0:
        return None
    where = [*conditions, p.c.variant == arm]
    if connection.dialect.name == "postgresql":
        query = sa.select(sa.func.percentile_cont(P99).within_group(p.c.latency_ms)).where(*where)
        return float(connection.execute(query).scalar_one())
    rank = P99 * (rows - 1)  # percentile_cont's rank, 0-based in ascending order
    lower = math.floor(rank)
    if lower >= rows - 1:
        query = sa.select(sa.func.max(p.c.latency_ms)).where(*where)
        return float(connection.execute(query).scalar_one())
    # descending: the (lower + 1)-th and lower-th ascending values sit at offsets rows-2-lower and rows-1-lower
    query = (sa.select(p.c.latency_ms).where(*where).order_by(p.c.latency_ms.desc())
             .limit(2).offset(rows - 2 - lower))
    above, below = (float(v) for v in connection.execute(query).scalars().all())
    return below + (rank - lower) * (above - below)


# -- the entry point ------------------------------------------------------------------------------------------


def aggregate_experiment(
    engine: Engine,
    tables: LogTables,
    experiment_id: str,
    start: datetime,
    end: datetime,
    metric: MetricKind,
    slice_keys: Sequence[str] = (),
) -> ExperimentAggregates:
    """The sufficient statistics of one experiment's served rows with ``start <= ts < end`` (naive times UTC).

    ``metric`` "proportion": per-unit accuracy (feedback label equal to the served label, over the unit's
    labelled items); "mean": per-unit mean feedback ``outcome``. Units without any such feedback in the window
    are not in the metric's statistics, but are in ``units`` (exposure, for SRM). Three statements: the metric
    (days and slices from one pass over the join), the exposure (one pass grouped by unit), the p99 latencies.
    """
    if as_utc(end) <= as_utc(start):
        raise ValueError(f"end must be after start, got start={start.isoformat()} end={end.isoformat()}")
    for key in slice_keys:
        check_name("slice key", key)  # also keeps the JSON path literal well-formed
    conditions = _served(tables, experiment_id, start, end)
    with engine.connect() as connection:
        unit_days = _unit_days(connection, tables, metric, conditions, slice_keys)
        parts = [_daily_part(connection, unit_days, regroup=bool(slice_keys)),
                 *(_slice_part(unit_days, i, key) for i, key in enumerate(slice_keys))]
        metric_rows = connection.execute(sa.union_all(*parts) if len(parts) > 1 else parts[0]).all()
        (champion_rows, champion_errors, champion_latency, challenger_rows, challenger_errors, challenger_latency,
         champion_units, challenger_units, both, without_unit) = connection.execute(
            _exposure_query(tables, conditions)).one()
        exposure = {"champion": (int(champion_rows), int(champion_errors), float(champion_latency)),
                    "challenger": (int(challenger_rows), int(challenger_errors), float(challenger_latency))}
        operations = {arm: ArmOperations(rows, errors, latency / rows if rows else None,
                                         _p99(connection, tables, conditions, arm, rows))
                      for arm, (rows, errors, latency) in exposure.items()}
    slices: dict[tuple[str, str], dict[str, ArmStats]] = {}
    for _, variant, key, value, n, total, total_sq, *_ in (r for r in metric_rows if r[0] == "slice"):
        slices.setdefault((key, str(value)), {})[variant] = ArmStats(int(n), float(total), float(total_sq))
    cumulative, daily = _by_day([r[1:2] + r[3:] for r in metric_rows if r[0] == "day"])
    return ExperimentAggregates(
        experiment_id, metric, start, end, cumulative, daily,
        slices={key: _arms(arms) for key, arms in sorted(slices.items())},
        units={"champion": int(champion_units), "challenger": int(challenger_units)},
        units_in_both_arms=int(both), rows_without_unit=int(without_unit), operations=operations,
    )


def _by_day(rows: Sequence[Any]) -> tuple[tuple[DailyArms, ...], tuple[DailyArms, ...]]:
    """Running totals of the per-day changes (cumulative) and the per-day statistics (daily), by arm."""
    changes: dict[date, dict[str, tuple[int, float, float]]] = {}
    days: dict[date, dict[str, ArmStats]] = {}
    for variant, day, active, today, today_sq, new_units, change, change_sq in rows:
        changes.setdefault(_as_date(day), {})[variant] = (int(new_units), float(change), float(change_sq))
        days.setdefault(_as_date(day), {})[variant] = ArmStats(int(active), float(today), float(today_sq))
    totals = dict.fromkeys(ARMS, (0, 0.0, 0.0))
    cumulative, daily = [], []
    for day in sorted(changes):
        for arm, (n, change, change_sq) in changes[day].items():
            n_total, total, total_sq = totals[arm]
            totals[arm] = (n_total + n, total + change, total_sq + change_sq)
        # float drift of the telescoped sums must not make a constant arm's sum of squares negative
        arms = {arm: ArmStats(n, total, max(total_sq, 0.0)) for arm, (n, total, total_sq) in totals.items()}
        cumulative.append(DailyArms(day, arms["champion"], arms["challenger"]))
        daily.append(DailyArms(day, *_arms(days[day])))
    return tuple(cumulative), tuple(daily)


def aggregate_for_spec(engine: Engine, tables: LogTables, spec: ExperimentSpec, start: datetime,
                       end: datetime) -> ExperimentAggregates:
    """``aggregate_experiment`` with the spec's experiment id, metric kind and slice keys."""
    return aggregate_experiment(engine, tables, spec.experiment_id, start, end, spec.primary.kind, spec.slices)
