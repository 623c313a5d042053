"""The experiment aggregation in the database, on SQLite and Postgres, against the same statistics computed in
Python from the rows written through PredictionLog: per-unit (not per-request) statistics per arm, cumulative
and daily per UTC day, slices, exposure units, rows without a unit, errors and p99 latency."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from tests.serving_fixtures import log_url, started_log
from tl_platform.experiments.ab_aggregate import aggregate_experiment, aggregate_for_spec
from tl_platform.experiments.ab_spec import ExperimentSpec, PrimaryMetric
from tl_platform.experiments.ab_stats import ArmStats
from tl_platform.serving.log_schema import LogTables
from tl_platform.serving.prediction_log import SERVED, SHADOW, PredictionLog, PredictionRow

__all__ = ["log_url", "started_log"]  # the fixture, imported for pytest
START = datetime(2025, 3, 1, tzinfo=UTC)
END = START + timedelta(days=3)
EXPERIMENT = "exp-7"


def prediction(request_id: str, index: int, ts: datetime, unit: str | None, variant: str, label: str,
               latency: float, role: str = SERVED, experiment: str | None = EXPERIMENT,
               attributes: dict[str, str] | None = None, error: str | None = None) -> PredictionRow:
    return PredictionRow(
        request_id=request_id, item_index=index, role=role, ts=ts, unit_id=unit, variant=variant,
        model_version="2" if variant == "challenger" else "1", label=label, confidence=0.8,
        probabilities={"0": 0.2, "1": 0.8}, latency_ms=latency, text_chars=5, token_count=2, unknown_share=0.0,
        truncated=False, projection=(), text=None, experiment_id=experiment, routing_salt="salt",
        challenger_share=0.5, error=error, attributes=attributes,
    )


@pytest.fixture
def log(started_log: PredictionLog) -> PredictionLog:
    return started_log


def tables(log: PredictionLog) -> LogTables:
    return LogTables(log.metadata, log.predictions, log.feedback)


def fill(log: PredictionLog, seed: int = 3) -> list[dict[str, Any]]:
    """About 240 requests of 1-3 items over three days (and around them), with feedback on most; returns the
    served in-experiment items with their feedback, as the Python reference reads them."""
    rng = np.random.default_rng(seed)
    rows: list[PredictionRow] = []
    feedback: list[tuple[str, int, str | None, float | None, datetime]] = []
    for r in range(240):
        request_id = f"{r:032x}"
        unit = None if r % 37 == 0 else f"u{rng.integers(0, 40)}"
        variant = "challenger" if unit is not None and int(unit[1:]) % 2 else "champion"
        ts = START + timedelta(minutes=float(rng.uniform(-600, 3 * 1440 + 600)))  # some outside the window
        experiment = "other" if r % 41 == 5 else EXPERIMENT
        attributes = {"device": str(rng.choice(["ios", "android"])), **({"domain": "yelp"} if r % 3 else {})}
        error = "timeout" if r % 29 == 0 else None
        for index in range(int(rng.integers(1, 4))):
            label = str(rng.integers(0, 2))
            rows.append(prediction(request_id, index, ts, unit, variant, label, float(rng.gamma(2.0, 10.0)),
                                   experiment=experiment, attributes=attributes, error=error))
            rows.append(prediction(request_id, index, ts, unit, "challenger", "1", 1.0, role=SHADOW))
            if rng.random() < 0.8:
                true: str | None = label if rng.random() < (0.8 if variant == "challenger" else 0.6) else str(1 - int(label))
                outcome = float(rng.normal(3.0, 1.0)) if rng.random() < 0.7 else None
                true = true if rng.random() < 0.9 else None
                feedback.append((request_id, index, true, outcome,
                                 ts + timedelta(hours=1)))
    log.submit(rows).result(timeout=30)
    for request_id, index, true_label, outcome, at in feedback:
        log.record_feedback(request_id, index, true_label, outcome, ts=at)
    labels = {(f[0], f[1]): (f[2], f[3]) for f in feedback}
    return [{**vars(row), "true": labels.get((row.request_id, row.item_index), (None, None))[0],
             "outcome": labels.get((row.request_id, row.item_index), (None, None))[1]}
            for row in rows if row.role == SERVED]


def in_window(item: dict[str, Any]) -> bool:
    return item["experiment_id"] == EXPERIMENT and START <= item["ts"] < END


def reference(items: list[dict[str, Any]], metric: str, keep: Any) -> dict[str, ArmStats]:
    """Per-unit values (accuracy over labelled items, or mean outcome), then n / sum / sum_sq per arm."""
    per_unit: dict[tuple[str, str], list[float]] = defaultdict(list)
    for item in items:
        if not in_window(item) or item["unit_id"] is None or not keep(item):
            continue
        if metric == "proportion" and item["true"] is not None:
            per_unit[(item["variant"], item["unit_id"])].append(1.0 if item["true"] == item["label"] else 0.0)
        if metric == "mean" and item["outcome"] is not None:
            per_unit[(item["variant"], item["unit_id"])].append(item["outcome"])
    arms: dict[str, ArmStats] = {"champion": ArmStats(0, 0.0, 0.0), "challenger": ArmStats(0, 0.0, 0.0)}
    for (variant, _), values in per_unit.items():
        arms[variant] = arms[variant] + ArmStats.of([float(np.mean(values))])
    return arms


def assert_arm(actual: ArmStats, expected: ArmStats) -> None:
    assert actual.n == expected.n
    assert actual.sum == pytest.approx(expected.sum, rel=1e-9, abs=1e-9)
    assert actual.sum_sq == pytest.approx(expected.sum_sq, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("metric", ["proportion", "mean"])
def test_unit_level_statistics_match_python_per_day_cumulative_and_slices(log: PredictionLog, metric: str) -> None:
    items = fill(log)
    result = aggregate_experiment(log.engine, tables(log), EXPERIMENT, START, END, metric,  # type: ignore[arg-type]
                                  slice_keys=("device", "domain"))
    days = [START.date() + timedelta(days=d) for d in range(3)]
    assert [d.day for d in result.cumulative] == days and [d.day for d in result.daily] == days

    def until(day: date) -> Any:
        return lambda item: item["ts"].date() <= day

    def on(day: date) -> Any:
        return lambda item: item["ts"].date() == day

    for cumulative, daily in zip(result.cumulative, result.daily, strict=True):
        expected = reference(items, metric, until(cumulative.day))
        assert_arm(cumulative.champion, expected["champion"])
        assert_arm(cumulative.challenger, expected["challenger"])
        expected_day = reference(items, metric, on(daily.day))
        assert_arm(daily.champion, expected_day["champion"])
        assert_arm(daily.challenger, expected_day["challenger"])
    assert result.overall[0].n > 10 and result.overall[1].n > 10  # the data exercise real sums

    expected_slices = {("device", "ios"), ("device", "android"), ("domain", "yelp")}
    assert set(result.slices) == expected_slices  # rows without "domain" form no slice of their own
    for key, value in expected_slices:
        expected = reference(items, metric, lambda item, k=key, v=value: item["attributes"].get(k) == v)
        assert_arm(result.slices[(key, value)][0], expected["champion"])
        assert_arm(result.slices[(key, value)][1], expected["challenger"])


def test_exposure_units_rows_without_unit_errors_and_p99(log: PredictionLog) -> None:
    items = [item for item in fill(log) if in_window(item)]
    result = aggregate_experiment(log.engine, tables(log), EXPERIMENT, START, END, "proportion")
    for arm in ("champion", "challenger"):
        arm_items = [item for item in items if item["variant"] == arm]
        assert result.units[arm] == len({item["unit_id"] for item in arm_items if item["unit_id"] is not None})
        operations = result.operations[arm]
        assert operations.rows == len(arm_items)
        assert operations.errors == sum(item["error"] is not None for item in arm_items) > 0
        latencies = np.array([item["latency_ms"] for item in arm_items])
        assert operations.p99_latency_ms == pytest.approx(float(np.percentile(latencies, 99)), rel=1e-12)
        assert operations.mean_latency_ms == pytest.approx(float(latencies.mean()), rel=1e-12)
    assert result.rows_without_unit == sum(item["unit_id"] is None for item in items) > 0
    assert result.units_in_both_arms == 0


def test_a_unit_seen_in_both_arms_is_counted(log: PredictionLog) -> None:
    log.submit([
        prediction("a" * 32, 0, START, "u1", "champion", "1", 5.0),
        prediction("b" * 32, 0, START + timedelta(hours=1), "u1", "challenger", "1", 5.0),
        prediction("c" * 32, 0, START + timedelta(hours=2), "u2", "challenger", "1", 5.0),
    ]).result(timeout=10)
    result = aggregate_experiment(log.engine, tables(log), EXPERIMENT, START, END, "proportion")
    assert result.units_in_both_arms == 1
    assert result.units == {"champion": 1, "challenger": 2}
    assert result.cumulative == () and result.overall == (ArmStats(0, 0.0, 0.0), ArmStats(0, 0.0, 0.0))
    # one row per arm: the p99 is that row's latency; an arm without rows has none
    assert result.operations["champion"].p99_latency_ms == 5.0 and result.operations["champion"].error_rate == 0.0


def test_empty_window_and_the_spec_entry_point(log: PredictionLog) -> None:
    spec = ExperimentSpec("exp-none", PrimaryMetric("accuracy", "proportion", baseline=0.8), mde=0.05,
                          slices=("device",))
    result = aggregate_for_spec(log.engine, tables(log), spec, START, END)
    assert result.units == {"champion": 0, "challenger": 0} and result.rows_without_unit == 0
    assert result.slices == {} and result.operations["challenger"].p99_latency_ms is None
    assert result.operations["champion"].error_rate is None
    with pytest.raises(ValueError, match="end must be after start"):
        aggregate_experiment(log.engine, tables(log), EXPERIMENT, END, START, "mean")
    with pytest.raises(ValueError, match="slice key"):
        aggregate_experiment(log.engine, tables(log), EXPERIMENT, START, END, "mean", slice_keys=('x"]',))
