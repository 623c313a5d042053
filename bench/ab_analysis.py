"""A/B analysis at scale: one experiment of --events served prediction rows in the real log backend, analysed by
the library (aggregation in the database, then the statistics), the two timed apart.

The log is made by PredictionLog (its Alembic migrations, so the real tables and indexes), then filled by bulk
SQL in the database (a recursive CTE on SQLite, generate_series on Postgres) through the same table
definitions: rows in time order over --days days, --units unit ids hashed 50/50 into champion and challenger
(1% of rows without a unit id, 0.1% with an error), slice attributes (device, domain), and feedback on
--feedback-share of the rows (labels: the challenger 1 point more accurate; outcomes: +0.05). Generation is
slow (minutes for 10M rows) and is cached: a SQLite file under .tlp/bench/ab_analysis/ (or a table prefix on
Postgres) named by the parameters, reused when its row count matches.

Timed, against the full recompute of the same run:
  (a) full      aggregate_experiment over every row (once): per-unit statistics per arm, per day (cumulative
                and daily) and per slice, exposure units, errors and p99 latency, all in SQL;
  fold          the rollup (tl_platform/experiments/ab_rollup.py) rebuilt from scratch up to the last day
                (once; a real deployment does this once per experiment, then one day at a time);
  (b) last day  fold_experiment of the last day alone (its rows and labels), what the daily decision adds;
  (c) rollup    aggregate_from_rollup: the same ExperimentAggregates read from the rollup's small tables;
  statistics    the fixed-horizon test, the mSPRT over every day, daily effects, SRM, Holm-corrected slices.
(c) and the statistics are medians of --repeats runs after one warm-up. The statistics from (a) and from (c)
are compared: the largest difference of any number in them, |x - y| / max(|y|, 1), is printed (at most 1e-9).
--index-copy also times the full recompute on a copy of the SQLite file with the index proposed for experiment
analysis (``PROPOSED_INDEXES``), so their effect is measured without migrating the real log.

    .venv/bin/python bench/ab_analysis.py                                   # 10,000,000 events, SQLite
    .venv/bin/python bench/ab_analysis.py --events 100000 --repeats 1
    .venv/bin/python bench/ab_analysis.py --url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tl_platform.experiments.ab_aggregate import ExperimentAggregates, aggregate_experiment
from tl_platform.experiments.ab_rollup import fold_experiment, reset_rollup
from tl_platform.experiments.ab_rollup_read import aggregate_from_rollup
from tl_platform.experiments.ab_sequential import mixing_variance, sequential_looks
from tl_platform.experiments.ab_slices import slice_report
from tl_platform.experiments.ab_spec import MetricKind
from tl_platform.experiments.ab_stats import compare_arms, srm_check
from tl_platform.serving.log_schema import LogTables, log_tables
from tl_platform.serving.prediction_log import PredictionLog

GENERATOR_VERSION = 1  # bump when the generated data change, so cached files are not reused
START = datetime(2025, 3, 1, tzinfo=UTC)
EXPERIMENT = "bench-exp"
SLICES = ("device", "domain")
CACHE = Path(".tlp/bench/ab_analysis")
# Indexes proposed for experiment analysis on SQLite (which has no hash aggregation, so grouping 10M rows by
# unit is a sort): the first covers the exposure pass and hands it the rows in unit order; the second lets the
# p99 walk the top 1% of one arm's latencies instead of scanning the arm.
PROPOSED_INDEXES = {
    "ix_predictions_experiment_unit": ("experiment_id", "role", "unit_id", "variant", "ts", "error", "latency_ms"),
    "ix_predictions_experiment_latency": ("experiment_id", "role", "variant", "latency_ms", "ts"),
}



def _hash(multiplier: int, modulus: int, of: str = "i") -> str:
    """A deterministic pseudo-random integer in [0, modulus) from ``of`` (the row number), in SQL: a Lehmer step
    (multiplier mod the prime 2^31 - 1) then a square mod the prime, which is not linear, so draws with different
    multipliers are not functions of one residue of i. Values stay below 2^31 before each product (< 2^63)."""
    step = f"((({of}) + 1) * {multiplier} % 2147483647)"
    return f"(({step} * {step} + {multiplier}) % 2147483647 % {modulus})"


def _select_sql(dialect: str, events: int, units: int, days: int, prefix: str) -> tuple[str, str]:
    """(predictions INSERT ... SELECT, feedback INSERT ... SELECT) for the dialect."""
    unit = _hash(2654435761, units)
    minutes = days * 1440
    if dialect == "sqlite":
        rows = f"WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < {events - 1}) SELECT i FROM c"
        request_id = "printf('%032x', i)"
        ts = (f"strftime('%Y-%m-%d %H:%M:%S', {int(START.timestamp())} + (i * {minutes * 60} / {events}), "
              f"'unixepoch') || '.000000'")
        unit_text = f"'u' || ({unit})"
        challenger = f"{_hash(40503, 1000, unit)} < 500"
    else:
        rows = f"SELECT i FROM generate_series(0::bigint, {events - 1}::bigint) AS c(i)"
        request_id = "lpad(to_hex(i), 32, '0')"
        ts = f"timestamptz '{START.isoformat()}' + (i * {minutes * 60} / {events}) * interval '1 second'"
        unit_text = f"'u' || ({unit})::text"
        challenger = f"{_hash(40503, 1000, unit)} < 500"
    variant = f"CASE WHEN {challenger} THEN 'challenger' ELSE 'champion' END"
    predictions = f"""
        INSERT INTO {prefix}predictions (request_id, item_index, role, ts, unit_id, variant, model_version, label,
            confidence, latency_ms, text_chars, token_count, unknown_share, truncated, error, experiment_id,
            routing_salt, challenger_share, attributes)
        SELECT {request_id}, 0, 'served', {ts},
            CASE WHEN {_hash(7919, 100)} = 0 THEN NULL ELSE {unit_text} END,
            {variant}, CASE WHEN {challenger} THEN '2' ELSE '1' END,
            CASE WHEN {_hash(31, 7)} < 4 THEN '1' ELSE '0' END, 0.8,
            5.0 + {_hash(1103515245, 100000)} / 1000.0 + CASE WHEN {_hash(69069, 100)} = 0 THEN 200.0 ELSE 0.0 END,
            40, 12, 0.0, {'false' if dialect == 'postgresql' else '0'},
            CASE WHEN {_hash(39373, 1000)} = 7 THEN 'timeout' ELSE NULL END, '{EXPERIMENT}', 'bench-salt', 0.5,
            CASE ({unit}) % 3 WHEN 0 THEN '{{"device":"ios","domain":"yelp"}}'
                              WHEN 1 THEN '{{"device":"android","domain":"imdb"}}'
                              ELSE '{{"device":"web","domain":"amazon"}}' END
        FROM ({rows}) AS n"""
    # feedback: the served label is correct with probability 0.85 (champion) or 0.86 (challenger)
    correct_below = f"CASE WHEN {challenger} THEN 860 ELSE 850 END"
    feedback = f"""
        INSERT INTO {prefix}feedback (request_id, item_index, ts, label, outcome)
        SELECT {request_id}, 0, {ts},
            CASE WHEN {_hash(48271, 1000)} < {correct_below}
                 THEN CASE WHEN {_hash(31, 7)} < 4 THEN '1' ELSE '0' END
                 ELSE CASE WHEN {_hash(31, 7)} < 4 THEN '0' ELSE '1' END END,
            {_hash(16807, 1000)} / 100.0 + CASE WHEN {challenger} THEN 0.05 ELSE 0.0 END
        FROM ({rows}) AS n WHERE {_hash(22695477, 1000)} < {{feedback_per_mille}}"""
    return predictions, feedback


def generate(url: str, prefix: str, events: int, units: int, days: int, feedback_share: float) -> PredictionLog:
    log = PredictionLog(url, prefix)
    with log.engine.connect() as connection:
        present = connection.execute(sa.select(sa.func.count()).select_from(log.predictions)).scalar_one()
    if present == events:
        print(f"reusing the generated log ({events:,} rows) at {url} prefix {prefix!r}")
        return log
    if present:
        raise SystemExit(f"{url} prefix {prefix!r} holds {present:,} rows, not {events:,}: remove it first")
    started = time.perf_counter()
    predictions, feedback = _select_sql(log.engine.dialect.name, events, units, days, prefix)
    with log.engine.begin() as connection:
        connection.execute(sa.text(predictions))
        connection.execute(sa.text(feedback.format(feedback_per_mille=round(feedback_share * 1000))))
    with log.engine.begin() as connection:
        connection.execute(sa.text("ANALYZE"))
    if log.engine.dialect.name == "sqlite":  # fold the WAL into the file, as a long-running log would have
        with log.engine.connect() as connection:
            connection.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
    print(f"generated {events:,} rows in {time.perf_counter() - started:.0f} s")
    return log


def analyse(aggregates: ExperimentAggregates, metric: MetricKind, mde: float) -> dict[str, Any]:
    champion, challenger = aggregates.overall
    return {
        "fixed_horizon": compare_arms(metric, champion, challenger),
        "sequential": sequential_looks(aggregates.cumulative, "higher", mixing_variance(mde)),
        "daily": [compare_arms(metric, d.champion, d.challenger) for d in aggregates.daily],
        "srm": srm_check(aggregates.units, {"champion": 0.5, "challenger": 0.5}),
        "slices": slice_report(aggregates.slices, metric, "higher"),
    }


def timed(repeats: int, run: Any) -> tuple[float, Any]:
    run()  # warm-up: the page cache, the planner
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def largest_difference(ours: Any, theirs: Any, path: str = "") -> tuple[float, str]:
    """The largest |x - y| / max(|y|, 1) over the numbers of two results of the same shape, and where it is;
    a difference of shape or of a non-numeric field raises, naming the field."""
    if isinstance(theirs, bool) or theirs is None or isinstance(theirs, str):
        if ours != theirs:
            raise AssertionError(f"{path or 'result'}: {ours!r} != {theirs!r}")
        return 0.0, path
    if isinstance(theirs, int | float):
        if not isinstance(ours, int | float):
            raise AssertionError(f"{path}: {ours!r} is not a number like {theirs!r}")
        if math.isnan(theirs) and math.isnan(ours):
            return 0.0, path
        return abs(ours - theirs) / max(abs(theirs), 1.0), path
    if dataclasses.is_dataclass(theirs) and not isinstance(theirs, type):
        ours, theirs = vars(ours), vars(theirs)
    if isinstance(theirs, dict):
        if set(ours) != set(theirs):
            raise AssertionError(f"{path}: keys {sorted(map(str, ours))} != {sorted(map(str, theirs))}")
        pairs = [(ours[k], theirs[k], f"{path}.{k}") for k in theirs]
    elif isinstance(theirs, list | tuple):
        if len(ours) != len(theirs):
            raise AssertionError(f"{path}: {len(ours)} entries != {len(theirs)}")
        pairs = [(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(ours, theirs, strict=True))]
    else:
        if ours != theirs:
            raise AssertionError(f"{path}: {ours!r} != {theirs!r}")
        return 0.0, path
    return max((largest_difference(a, b, where) for a, b, where in pairs), default=(0.0, path))


def bench(log: PredictionLog, metric: MetricKind, days: int, repeats: int, label: str) -> float:
    tables = log_tables(log.table_prefix)
    end = START + timedelta(days=days)
    last_day = end - timedelta(days=1)
    mde = 0.01 if metric == "proportion" else 0.05
    reset_rollup(log.engine, tables, EXPERIMENT)
    started = time.perf_counter()
    initial = fold_experiment(log.engine, tables, EXPERIMENT, START, last_day, SLICES, feedback_up_to=last_day)
    initial_s = time.perf_counter() - started
    started = time.perf_counter()
    last = fold_experiment(log.engine, tables, EXPERIMENT, START, end, SLICES, feedback_up_to=end + timedelta(days=1))
    fold_s = time.perf_counter() - started
    rollup_s, aggregates = timed(repeats, lambda: aggregate_from_rollup(
        log.engine, tables, EXPERIMENT, START, end, metric, SLICES))
    statistics_s, result = timed(repeats, lambda: analyse(aggregates, metric, mde))
    started = time.perf_counter()
    full = aggregate_experiment(log.engine, tables, EXPERIMENT, START, end, metric, SLICES)
    full_s = time.perf_counter() - started
    aggregates_difference = largest_difference(aggregates, full)
    statistics_difference = largest_difference(result, analyse(full, metric, mde))
    champion, challenger = aggregates.overall
    effect = result["fixed_horizon"]
    sequential = result["sequential"][-1]
    print(f"[{label}] metric {metric}:")
    print(f"  (a) full recompute   {full_s:8.2f} s")
    print(f"      fold from scratch {initial_s:7.2f} s  ({initial.served_rows:,} rows up to {last_day.date()})")
    print(f"  (b) fold last day    {fold_s:8.2f} s  ({last.served_rows:,} rows, {last.unit_days_updated:,} unit-days)")
    print(f"  (c) rollup analysis  {rollup_s:8.3f} s")
    print(f"      statistics       {statistics_s:8.3f} s")
    print(f"  (c) + statistics     {rollup_s + statistics_s:8.3f} s: {full_s / (rollup_s + statistics_s):,.0f}x "
          f"faster than (a); with (b) {fold_s + rollup_s + statistics_s:.2f} s, "
          f"{full_s / (fold_s + rollup_s + statistics_s):.1f}x")
    print(f"  largest difference (c) vs (a): aggregates {aggregates_difference[0]:.1e} at "
          f"{aggregates_difference[1] or '-'}, statistics {statistics_difference[0]:.1e} at "
          f"{statistics_difference[1] or '-'}")
    if max(aggregates_difference[0], statistics_difference[0]) > 1e-9:
        raise SystemExit("the rollup's statistics differ from the full recompute's by more than 1e-9")
    print(f"  units {aggregates.units}, rows without unit {aggregates.rows_without_unit:,}; labelled units "
          f"{champion.n:,} / {challenger.n:,}; difference {effect.difference:+.4f} "
          f"[{effect.ci_low:+.4f}, {effect.ci_high:+.4f}] p {effect.p_value:.3g}; day {sequential.day}: "
          f"{sequential.decision} (always-valid p {sequential.p_value:.3g})")
    print(f"  SRM: {result['srm'].reason}")
    print(f"  p99 latency ms {[round(o.p99_latency_ms or 0, 2) for o in aggregates.operations.values()]}, "
          f"error rates {[round(o.error_rate or 0, 4) for o in aggregates.operations.values()]}; "
          f"slices harmed: {[f'{e.key}={e.value}' for e in result['slices'].harmed]}")
    return rollup_s + statistics_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="served prediction rows in the experiment")
    parser.add_argument("--units", type=int, default=0, help="unit ids (default: events / 10)")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--feedback-share", type=float, default=0.2)
    parser.add_argument("--metric", choices=["proportion", "mean"], default="proportion")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", default="", help="a Postgres URL (default: a cached SQLite file)")
    parser.add_argument("--index-copy", action="store_true", help="also time a copy with PROPOSED_INDEXES (SQLite)")
    args = parser.parse_args()
    units = args.units or max(args.events // 10, 2)
    key = f"ab_e{args.events}_u{units}_d{args.days}_f{round(args.feedback_share * 1000)}_v{GENERATOR_VERSION}"
    if args.url:
        url, prefix = args.url, f"ab{hashlib.sha256(key.encode()).hexdigest()[:10]}_"  # Postgres names: 63 chars
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        url, prefix = f"sqlite:///{CACHE / key}.db", ""
    log = generate(url, prefix, args.events, units, args.days, args.feedback_share)
    try:
        total = bench(log, args.metric, args.days, args.repeats, log.engine.dialect.name)
    finally:
        log.close()
    print(f"analysis of {args.events:,} events from the rollup, with the statistics: {total:.2f} s (target < 5 s)")
    if args.index_copy and not args.url:
        copy = CACHE / f"{key}_indexed.db"
        if not copy.exists():
            started = time.perf_counter()
            shutil.copyfile(CACHE / f"{key}.db", copy)
            engine = sa.create_engine(f"sqlite:///{copy}")
            with engine.begin() as connection:
                for name, columns in PROPOSED_INDEXES.items():
                    connection.execute(sa.text(f"CREATE INDEX {name} ON predictions ({', '.join(columns)})"))
                connection.execute(sa.text("ANALYZE"))
            engine.dispose()
            print(f"copied and indexed in {time.perf_counter() - started:.0f} s")
        indexed = PredictionLog(f"sqlite:///{copy}")
        try:
            bench(indexed, args.metric, args.days, args.repeats, f"sqlite + {', '.join(PROPOSED_INDEXES)}")
            forced_indexes(indexed, args.days)
        finally:
            indexed.close()


def forced_indexes(log: PredictionLog, days: int) -> None:
    """The exposure and p99 statements with the proposed indexes forced (INDEXED BY). In this log every row is
    one experiment's, so the planner rightly prefers the ts index; in a log of many experiments the
    experiment_id equality is what makes these indexes chosen."""
    from tl_platform.experiments import ab_aggregate

    tables = LogTables(log.metadata, log.predictions, log.feedback)
    conditions = ab_aggregate._served(tables, EXPERIMENT, START, START + timedelta(days=days))
    p = tables.predictions
    with log.engine.connect() as connection:
        def forced(query: Any, index: str) -> tuple[float, Any]:
            sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
            sql = sql.replace("FROM predictions", f"FROM predictions INDEXED BY {index}")
            started = time.perf_counter()
            rows = connection.execute(sa.text(sql)).all()
            return time.perf_counter() - started, rows

        exposure_s, _ = forced(ab_aggregate._exposure_query(tables, conditions), "ix_predictions_experiment_unit")
        rows = connection.execute(sa.select(sa.func.count()).where(*conditions, p.c.variant == "champion")).scalar_one()
        top = (sa.select(p.c.latency_ms).where(*conditions, p.c.variant == "champion")
               .order_by(p.c.latency_ms.desc()).limit(2).offset(rows - 2 - int(0.99 * (rows - 1))))
        p99_s, _ = forced(top, "ix_predictions_experiment_latency")
    print(f"[sqlite, indexes forced] exposure {exposure_s:.2f} s, p99 of one arm {p99_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
