"""Reading an experiment's aggregates from its rollup (``ab_rollup`` folds them): a few hundred rows, not the log."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tl_platform.experiments.ab_aggregate import (
    ARMS,
    P99,
    ArmOperations,
    ExperimentAggregates,
    _by_day,
)
from tl_platform.experiments.ab_rollup_state import (
    _DAILY,
    METRICS,
    RollupError,
    _rollup,
)
from tl_platform.experiments.ab_spec import ExperimentSpec, MetricKind
from tl_platform.experiments.ab_stats import ArmStats
from tl_platform.serving.log_readers import as_utc
from tl_platform.serving.log_schema import LogTables, RollupTables

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



def rollup_for_spec(engine: Engine, tables: LogTables, spec: ExperimentSpec, start: datetime,
                    end: datetime) -> ExperimentAggregates:
    """``aggregate_from_rollup`` with the spec's experiment id, metric kind and slice keys."""
    return aggregate_from_rollup(engine, tables, spec.experiment_id, start, end, spec.primary.kind, spec.slices)



