"""The incremental rollup against the full recompute, on SQLite and Postgres: fold (in one step, or in two with
late labels between them, and again with nothing new) then ``aggregate_from_rollup`` equals
``aggregate_experiment`` to 1e-9 for both metric kinds, every day, slice, exposure count and p99."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.serving_fixtures import log_url
from tests.unit.test_ab_aggregate import END, EXPERIMENT, START, fill, prediction
from tl_platform.experiments import ab_rollup
from tl_platform.experiments.ab_aggregate import ExperimentAggregates, aggregate_experiment
from tl_platform.experiments.ab_rollup import fold_experiment, reset_rollup
from tl_platform.experiments.ab_rollup_read import aggregate_from_rollup
from tl_platform.experiments.ab_rollup_state import RollupError
from tl_platform.experiments.ab_stats import ArmStats
from tl_platform.serving.log_schema import LogTables, log_tables
from tl_platform.serving.prediction_log import PredictionLog

__all__ = ["log_url"]  # the fixture, imported for pytest
SLICES = ("device", "domain")
SETTLED = END + timedelta(days=2)  # after every label fill records


@pytest.fixture
def log(log_url: tuple[str, str]) -> Iterator[PredictionLog]:
    opened = PredictionLog(log_url[0], log_url[1])
    opened.start()
    yield opened
    opened.drop_tables()  # the rollup tables too: drop_log knows only the log's own
    opened.close()


def tables(log: PredictionLog) -> LogTables:
    return log_tables(log.table_prefix)


def assert_arm(actual: ArmStats, expected: ArmStats) -> None:
    assert actual.n == expected.n
    assert actual.sum == pytest.approx(expected.sum, rel=1e-9, abs=1e-9)
    assert actual.sum_sq == pytest.approx(expected.sum_sq, rel=1e-9, abs=1e-9)


def assert_same(rolled: ExperimentAggregates, full: ExperimentAggregates) -> None:
    assert (rolled.experiment_id, rolled.metric) == (full.experiment_id, full.metric)
    for ours, theirs in ((rolled.cumulative, full.cumulative), (rolled.daily, full.daily)):
        assert [d.day for d in ours] == [d.day for d in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert_arm(a.champion, b.champion)
            assert_arm(a.challenger, b.challenger)
    assert list(rolled.slices) == list(full.slices)
    for key, (champion, challenger) in full.slices.items():
        assert_arm(rolled.slices[key][0], champion)
        assert_arm(rolled.slices[key][1], challenger)
    assert (rolled.units, rolled.units_in_both_arms, rolled.rows_without_unit) == (
        full.units, full.units_in_both_arms, full.rows_without_unit)
    for arm, expected in full.operations.items():
        actual = rolled.operations[arm]
        assert (actual.rows, actual.errors) == (expected.rows, expected.errors)
        for ours_value, theirs_value in ((actual.mean_latency_ms, expected.mean_latency_ms),
                                         (actual.p99_latency_ms, expected.p99_latency_ms)):
            assert (ours_value is None) == (theirs_value is None)
            if theirs_value is not None:
                assert ours_value == pytest.approx(theirs_value, rel=1e-9, abs=1e-9)


def assert_rollup_matches(log: PredictionLog) -> None:
    for metric in ("proportion", "mean"):
        rolled = aggregate_from_rollup(log.engine, tables(log), EXPERIMENT, START, END, metric, SLICES)
        full = aggregate_experiment(log.engine, tables(log), EXPERIMENT, START, END, metric, SLICES)
        assert full.overall[0].n > 10 and full.overall[1].n > 10  # real sums are compared
        assert_same(rolled, full)


def test_one_fold_equals_the_full_recompute_and_a_repeated_fold_folds_nothing(log: PredictionLog) -> None:
    fill(log)
    first = fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    assert first.served_rows > 100 and first.unit_days_updated > 20 and first.refolded is None
    assert_rollup_matches(log)
    again = fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    assert (again.served_rows, again.unit_days_updated, again.refolded) == (0, 0, None)
    assert_rollup_matches(log)


def test_two_folds_with_late_labels_between_equal_the_full_recompute(log: PredictionLog) -> None:
    fill(log)
    # rows of day 0 without feedback yet; their labels arrive after the first fold
    late = [prediction(f"{r:032x}late", 0, START + timedelta(hours=3 + r), f"u{r % 7}",
                       "challenger" if r % 2 else "champion", str(r % 2), 4.0 + r, attributes={"device": "ios"})
            for r in range(12)]
    log.submit(late).result(timeout=30)
    middle = START + timedelta(days=1, hours=7)  # a day split between two folds; labels of its last hour wait
    first = fold_experiment(log.engine, tables(log), EXPERIMENT, START, middle, SLICES, feedback_up_to=middle)
    assert first.served_rows > 50
    for r, row in enumerate(late):
        log.record_feedback(row.request_id, 0, str((r // 2) % 2), float(r), ts=START + timedelta(days=2))
    second = fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    assert second.served_rows > 50 and second.refolded is None
    assert_rollup_matches(log)
    assert fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES,
                           feedback_up_to=SETTLED).unit_days_updated == 0
    assert_rollup_matches(log)


def test_a_label_backdated_below_the_watermark_makes_the_next_fold_start_over(log: PredictionLog) -> None:
    fill(log)
    log.submit([prediction("f" * 32, 0, START + timedelta(hours=5), "u3", "challenger", "1", 9.0)]).result(timeout=10)
    fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    log.record_feedback("f" * 32, 0, "0", 1.5, ts=START + timedelta(hours=6))  # a replay, long before SETTLED
    report = fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    assert report.refolded is not None and "+1 feedback rows recorded with a ts before" in report.refolded
    assert_rollup_matches(log)


def test_a_small_latency_tail_is_pruned_and_rebuilt_and_the_p99_stays_exact(
        log: PredictionLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab_rollup, "TAIL_MIN_ROWS", 1)
    monkeypatch.setattr(ab_rollup, "TAIL_KEEP", 2)
    monkeypatch.setattr(ab_rollup, "TAIL_PRUNE", 3)
    fill(log)
    for hours in (6, 20, 30, 45, 60, 72):  # several folds: the tail is rebuilt, extended and cut back
        fold_experiment(log.engine, tables(log), EXPERIMENT, START, START + timedelta(hours=hours), SLICES,
                        feedback_up_to=SETTLED)
    assert_rollup_matches(log)


def test_two_folds_at_once_fold_once(log: PredictionLog) -> None:
    fill(log)
    errors: list[BaseException] = []
    reports = []

    def fold() -> None:
        try:
            reports.append(fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES,
                                           feedback_up_to=SETTLED))
        except BaseException as err:  # handed to the main thread, which fails the test with it
            errors.append(err)

    threads = [threading.Thread(target=fold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(r.served_rows > 0 for r in reports) == [False, True]  # the second found nothing new
    assert_rollup_matches(log)


def test_refusals_name_what_differs(log: PredictionLog) -> None:
    fill(log)
    with pytest.raises(RollupError, match=f"experiment '{EXPERIMENT}' has not been folded"):
        aggregate_from_rollup(log.engine, tables(log), EXPERIMENT, START, END, "mean")
    fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, ("device",), feedback_up_to=SETTLED)
    with pytest.raises(RollupError, match=r"is folded for \[2025-03-01T00:00:00\+00:00, 2025-03-04T00:00:00\+00:00\), "
                                          r"not \[2025-03-01T00:00:00\+00:00, 2025-03-03T00:00:00\+00:00\)"):
        aggregate_from_rollup(log.engine, tables(log), EXPERIMENT, START, END - timedelta(days=1), "mean")
    with pytest.raises(RollupError, match=r"slice keys \['domain'\] were not folded"):
        aggregate_from_rollup(log.engine, tables(log), EXPERIMENT, START, END, "mean", SLICES)
    with pytest.raises(RollupError, match=r"with slice keys \['device'\], not from .* with \['device', 'domain'\]"):
        fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    with pytest.raises(RollupError, match=r"feedback_up_to .* is before the feedback already folded"):
        fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, ("device",), feedback_up_to=END)
    with pytest.raises(RollupError, match=r"tables\.rollup is None"):
        fold_experiment(log.engine, LogTables(log.metadata, log.predictions, log.feedback), EXPERIMENT, START, END)
    reset_rollup(log.engine, tables(log), EXPERIMENT)  # then another slice choice folds
    fold_experiment(log.engine, tables(log), EXPERIMENT, START, END, SLICES, feedback_up_to=SETTLED)
    assert_rollup_matches(log)
