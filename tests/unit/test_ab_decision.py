"""The daily verdict on constructed aggregates: each rule, and the order in which they are trusted."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tl_platform.experiments.ab_aggregate import ArmOperations, ExperimentAggregates
from tl_platform.experiments.ab_decision import decide
from tl_platform.experiments.ab_sequential import DailyArms
from tl_platform.experiments.ab_spec import ExperimentSpec, Guardrail, PrimaryMetric
from tl_platform.experiments.ab_stats import ArmStats

START = date(2026, 3, 1)
SPEC = ExperimentSpec(
    experiment_id="exp-1", primary=PrimaryMetric("accuracy", "proportion", baseline=0.80), mde=0.05,
    guardrails=(
        Guardrail("latency", "p99_latency_ms", 250.0, "lower"),
        Guardrail("yelp_accuracy", "accuracy", -0.02, "higher", comparison="vs_champion", slice={"domain": "yelp"}),
    ),
    slices=("domain",), min_duration_days=7, challenger_share=0.5, routing_salt="salt",
)


def binary(n: int, rate: float) -> ArmStats:
    ones = round(n * rate)
    return ArmStats(n, float(ones), float(ones))


def aggregates(days: int, champion_rate: float, challenger_rate: float, units: int = 1200,
               slice_rates: tuple[float, float] | None = None, split: tuple[int, int] | None = None,
               p99: tuple[float, float] = (40.0, 45.0)) -> ExperimentAggregates:
    """``units`` per arm over ``days`` days, growing linearly; yelp holds a third of each arm."""
    cumulative = tuple(
        DailyArms(START + timedelta(days=d), binary(units * (d + 1) // days, champion_rate),
                  binary(units * (d + 1) // days, challenger_rate))
        for d in range(days)
    )
    daily = tuple(DailyArms(START + timedelta(days=d), binary(units // days, champion_rate),
                            binary(units // days, challenger_rate)) for d in range(days))
    yelp = slice_rates or (champion_rate, challenger_rate)
    slices = {("domain", "yelp"): (binary(units // 3, yelp[0]), binary(units // 3, yelp[1])),
              ("domain", "amazon"): (binary(2 * units // 3, champion_rate), binary(2 * units // 3, challenger_rate))}
    counts = split or (units, units)
    return ExperimentAggregates(
        "exp-1", "proportion", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=days),
        cumulative, daily, slices, units={"champion": counts[0], "challenger": counts[1]}, units_in_both_arms=0,
        rows_without_unit=7,
        operations={"champion": ArmOperations(5000, 0, 20.0, p99[0]), "challenger": ArmOperations(5000, 1, 22.0, p99[1])},
    )


def day(n: int) -> date:
    return START + timedelta(days=n - 1)


def test_a_clearly_better_challenger_ships_after_the_minimum_duration_not_before() -> None:
    early = decide(SPEC, aggregates(3, 0.80, 0.88), START, day(3))
    assert early.verdict == "keep_running" and "no decision before one full business cycle" in early.reasons[0]
    late = decide(SPEC, aggregates(8, 0.80, 0.88), START, day(8))
    assert late.verdict == "ship", late.summary()
    assert late.primary.significant and late.primary.difference == pytest.approx(0.08, abs=1e-3)
    assert [g.breached for g in late.guardrails] == [False, False]
    assert late.to_json()["rows_without_unit"] == 7 and len(late.daily) == 8


def test_a_challenger_worse_on_the_critical_slice_is_rolled_back_early_naming_the_slice() -> None:
    decision = decide(SPEC, aggregates(3, 0.80, 0.82, slice_rates=(0.85, 0.60)), START, day(3))
    assert decision.verdict == "roll_back"
    assert any("yelp_accuracy" in reason and "domain=yelp" in reason for reason in decision.reasons), decision.reasons
    assert any(reason.startswith("slice domain=yelp") for reason in decision.reasons), decision.reasons


def test_a_slice_dip_within_noise_does_not_roll_back() -> None:
    decision = decide(SPEC, aggregates(3, 0.80, 0.80, slice_rates=(0.80, 0.76)), START, day(3))
    assert decision.verdict == "keep_running", decision.summary()
    yelp = decision.guardrails[1]
    assert not yelp.breached and "not significantly worse" in yelp.note


def test_a_sample_ratio_mismatch_invalidates_whatever_the_effect() -> None:
    decision = decide(SPEC, aggregates(8, 0.80, 0.90, split=(49_000, 51_000)), START, day(8))
    assert decision.verdict == "invalid" and "sample ratio mismatch" in decision.reasons[0]


def test_a_breached_operational_guardrail_rolls_back() -> None:
    decision = decide(SPEC, aggregates(8, 0.80, 0.88, p99=(40.0, 400.0)), START, day(8))
    assert decision.verdict == "roll_back"
    assert "guardrail latency breached: p99_latency_ms 400" in decision.reasons[0]


def test_no_gain_at_the_planned_sample_rolls_back_and_short_of_it_keeps_running() -> None:
    reached = decide(SPEC, aggregates(10, 0.80, 0.80, units=1500), START, day(10))
    assert reached.sample_reached and reached.verdict == "roll_back"
    assert "planned sample was reached without a significant gain" in reached.reasons[0]
    short = decide(SPEC, aggregates(8, 0.80, 0.80, units=300), START, day(8))
    assert not short.sample_reached and short.verdict == "keep_running"
    assert "champion 300 of" in short.reasons[0]
    expired = decide(SPEC, aggregates(28, 0.80, 0.80, units=300), START, day(28))
    assert expired.verdict == "roll_back" and "maximum duration of 28 days" in expired.reasons[0]


def test_a_day_before_the_start_is_refused() -> None:
    with pytest.raises(ValueError, match="before the experiment started"):
        decide(SPEC, aggregates(3, 0.8, 0.8), START, START - timedelta(days=1))


def test_the_pictures_are_written(tmp_path: Path) -> None:
    from tl_platform.experiments.ab_plots import plot_daily_effects, plot_sample_progress

    decision = decide(SPEC, aggregates(8, 0.80, 0.88), START, day(8))
    for plot, name in ((plot_daily_effects, "effects.png"), (plot_sample_progress, "sample.png")):
        written = plot(decision, tmp_path / name)
        assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written.stat().st_size > 5000


def test_cost_per_1000_requests_prices_the_mean_latency_and_an_unknown_metric_is_not_measured() -> None:
    from dataclasses import replace

    spec = replace(SPEC, guardrails=(Guardrail("cost", "cost_per_1k_requests", 0.0001, "lower", comparison="vs_champion"),
                                     Guardrail("revenue", "revenue_per_user", -1.0, "higher", comparison="vs_champion")))
    decision = decide(spec, aggregates(8, 0.80, 0.88), START, day(8))
    cost, revenue = decision.guardrails
    # 20 ms and 22 ms of a core at $0.04 an hour, per 1,000 requests
    assert cost.champion == pytest.approx(20 / 3.6e6 * 0.04 * 1000) and cost.compared == pytest.approx(2 / 3.6e6 * 0.04 * 1000)
    assert not cost.breached
    assert revenue.compared is None and "not measured" in revenue.note
    assert decision.verdict == "keep_running" and "not measured yet" in decision.reasons[0]
    given = decide(spec, aggregates(8, 0.80, 0.88), START, day(8), extra_guardrail_values={"revenue_per_user": (5.0, 5.5)})
    assert given.verdict == "ship" and given.guardrails[1].compared == pytest.approx(0.5)
    # never measured by the maximum duration: the experiment ends, and what cannot be shown safe is not shipped
    last = decide(spec, aggregates(spec.max_duration_days, 0.80, 0.88), START, day(spec.max_duration_days))
    assert last.verdict == "roll_back" and "still not measured after the maximum duration" in last.reasons[0]
