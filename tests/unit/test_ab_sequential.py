"""The mixture SPRT: its likelihood ratio against numerical integration, the mixing variance's optimum, the
confidence sequence's boundary, and the day-by-day decisions (benefit, harm, continue, too little data)."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest
from scipy import integrate, stats

from tl_platform.experiments.ab_sequential import (
    DailyArms,
    always_valid_p_values,
    confidence_half_width,
    log_likelihood_ratio,
    mixing_variance,
    optimal_variance_ratio,
    sequential_looks,
)
from tl_platform.experiments.ab_stats import ArmStats

DAY0 = date(2025, 3, 1)


@pytest.mark.parametrize(("difference", "variance", "tau2"), [(0.0, 1.0, 1.0), (0.3, 0.01, 0.04), (-2.0, 0.5, 0.1)])
def test_likelihood_ratio_is_the_normal_mixture_integrated_numerically(difference: float, variance: float,
                                                                       tau2: float) -> None:
    sd = math.sqrt(variance)

    def mixed(theta: float) -> float:
        return float(stats.norm.pdf(difference, theta, sd) * stats.norm.pdf(theta, 0.0, math.sqrt(tau2)))

    reach = abs(difference) + 20 * math.sqrt(variance + tau2)  # the integrand is nil beyond
    numerator = integrate.quad(mixed, -reach, reach, points=[0.0, difference], epsabs=0, epsrel=1e-11, limit=200)[0]
    expected = numerator / stats.norm.pdf(difference, 0.0, sd)
    assert float(np.exp(log_likelihood_ratio(difference, variance, tau2))) == pytest.approx(expected, rel=1e-7)


def test_confidence_sequence_edge_is_where_the_ratio_reaches_one_over_alpha() -> None:
    variance, tau2, alpha = 0.02, 0.05, 0.05
    edge = float(confidence_half_width(variance, tau2, alpha))
    assert float(log_likelihood_ratio(edge, variance, tau2)) == pytest.approx(math.log(1 / alpha), rel=1e-12)


def test_mixing_variance_makes_the_sequence_narrowest_at_the_planned_size() -> None:
    r = optimal_variance_ratio(0.05)
    assert r == pytest.approx(2 * math.log(20) + math.log1p(r), rel=1e-12) and 8.2 < r < 8.22
    mde = 0.02
    tau2 = mixing_variance(mde, 0.05, 0.8)
    assert math.sqrt(tau2) / mde == pytest.approx(1.0229, abs=1e-4)
    planned = (mde / (stats.norm.ppf(0.975) + stats.norm.ppf(0.8))) ** 2  # variance of the difference at plan
    best = float(confidence_half_width(planned, tau2, 0.05))
    for factor in (0.5, 0.8, 1.25, 2.0):
        assert float(confidence_half_width(planned, tau2 * factor, 0.05)) > best
    with pytest.raises(ValueError, match="mde > 0"):
        mixing_variance(0.0)


def cumulative_days(control: list[ArmStats], treatment: list[ArmStats]) -> list[DailyArms]:
    days, total_c, total_t = [], ArmStats(0, 0.0, 0.0), ArmStats(0, 0.0, 0.0)
    for offset, (c, t) in enumerate(zip(control, treatment, strict=True)):
        total_c, total_t = total_c + c, total_t + t
        days.append(DailyArms(DAY0 + timedelta(days=offset), total_c, total_t))
    return days


def normal_days(seed: int, days: int, per_day: int, effect: float, sd: float = 1.0) -> list[DailyArms]:
    rng = np.random.default_rng(seed)
    control = [ArmStats.of(rng.normal(0.0, sd, per_day)) for _ in range(days)]
    treatment = [ArmStats.of(rng.normal(effect, sd, per_day)) for _ in range(days)]
    return cumulative_days(control, treatment)


def test_a_clear_benefit_stops_early_and_the_stop_sticks() -> None:
    looks = sequential_looks(normal_days(1, 20, 500, effect=0.2), "higher", tau2=mixing_variance(0.1))
    first = next(i for i, look in enumerate(looks) if look.decision != "continue")
    assert looks[first].decision == "stop_benefit" and first < 10
    assert all(look.decision == "stop_benefit" for look in looks[first:])
    stop = looks[first]
    assert stop.cs_low is not None and stop.cs_low > 0 and stop.p_value <= 0.05
    assert "challenger better: always-valid p" in looks[-1].reason


def test_harm_stops_for_harm_and_direction_lower_reverses_the_reading() -> None:
    days = normal_days(2, 20, 500, effect=-0.2)
    assert sequential_looks(days, "higher", mixing_variance(0.1))[-1].decision == "stop_harm"
    assert sequential_looks(days, "lower", mixing_variance(0.1))[-1].decision == "stop_benefit"


def test_no_effect_continues_with_a_nested_sequence_and_a_falling_p_value() -> None:
    looks = sequential_looks(normal_days(3, 30, 300, effect=0.0), "higher", mixing_variance(0.1))
    assert all(look.decision == "continue" for look in looks)
    lows, highs = [look.cs_low for look in looks], [look.cs_high for look in looks]
    assert all(lows[i + 1] >= lows[i] and highs[i + 1] <= highs[i] for i in range(len(looks) - 1))  # type: ignore[operator]
    assert all(looks[i + 1].p_value <= looks[i].p_value for i in range(len(looks) - 1))
    assert all((look.cs_low or 0.0) < 0 < (look.cs_high or 0.0) for look in looks)


def test_days_without_two_units_per_arm_are_insufficient_data() -> None:
    empty, one = ArmStats(0, 0.0, 0.0), ArmStats.of([1.0])
    days = cumulative_days([empty, one, ArmStats.of([2.0, 0.0])], [one, ArmStats.of([0.5]), ArmStats.of([1.5, 3.0])])
    looks = sequential_looks(days, "higher", tau2=1.0)
    assert [look.decision for look in looks] == ["insufficient_data", "insufficient_data", "continue"]
    assert looks[0].difference is None and looks[0].p_value == 1.0 and "0 champion and 1 challenger units" in looks[0].reason


def test_scalar_looks_and_array_p_values_agree() -> None:
    days = normal_days(4, 15, 200, effect=0.12)
    tau2 = mixing_variance(0.1)
    looks = sequential_looks(days, "higher", tau2)
    c, t = [d.champion for d in days], [d.challenger for d in days]
    p = always_valid_p_values([a.n for a in c], [a.sum for a in c], [a.sum_sq for a in c],
                              [a.n for a in t], [a.sum for a in t], [a.sum_sq for a in t], tau2)
    assert p == pytest.approx([look.p_value for look in looks], rel=1e-12)


def test_bad_inputs_are_refused() -> None:
    days = normal_days(5, 3, 10, effect=0.0)
    with pytest.raises(ValueError, match="tau2: the mixing variance must be > 0"):
        sequential_looks(days, "higher", tau2=0.0)
    with pytest.raises(ValueError, match="days must be distinct and in order"):
        sequential_looks(list(reversed(days)), "higher", tau2=1.0)
