"""Simulated experiments, thousands at once on sufficient statistics (NumPy), through the library's formulas.

A/A tests looked at daily for 30 days: the mSPRT's false-positive rate stays within alpha plus simulation
error, while the fixed-horizon Welch test peeked at daily rejects a true null far more often than alpha.
Simulated power at the planned MDE and sample size matches the power calculation within 3 points. A 49/51
split of 100,000 units is flagged by SRM at least 95% of the time. Fixed seeds: the numbers are reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tl_platform.experiments.ab_sequential import always_valid_p_values, mixing_variance
from tl_platform.experiments.ab_spec import ExperimentSpec, PrimaryMetric
from tl_platform.experiments.ab_stats import srm_p_values, two_proportion_arrays, welch_arrays

ALPHA = 0.05
EXPERIMENTS = 4000
DAYS = 30


def simulation_bound(rate: float, runs: int) -> float:
    """Two binomial standard errors: how far a rate estimated from ``runs`` experiments may stray."""
    return 2 * math.sqrt(rate * (1 - rate) / runs)


def normal_daily_sums(rng: np.random.Generator, shape: tuple[int, int], per_day: int, mean: float, sd: float,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (n, sum, sum of squares) of ``per_day`` normal unit values a day, drawn exactly as sufficient
    statistics: the day's mean is normal, its (n - 1) s^2 / sd^2 chi-squared, independently."""
    day_mean = rng.normal(mean, sd / math.sqrt(per_day), shape)
    day_ss = sd**2 * rng.chisquare(per_day - 1, shape)
    total = per_day * day_mean
    total_sq = day_ss + per_day * day_mean**2
    n = np.full(shape, float(per_day))
    return np.cumsum(n, axis=-1), np.cumsum(total, axis=-1), np.cumsum(total_sq, axis=-1)


def aa_looks(seed: int, mean_metric: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(always-valid p, fixed-horizon p) per experiment and day of A/A tests, and the tau^2 used."""
    rng = np.random.default_rng(seed)
    shape = (EXPERIMENTS, DAYS)
    per_day = 200
    if mean_metric:
        control = normal_daily_sums(rng, shape, per_day, 10.0, 3.0)
        treatment = normal_daily_sums(rng, shape, per_day, 10.0, 3.0)
        tau2 = mixing_variance(0.3)  # an MDE of 0.1 standard deviations
    else:  # one 0/1 value per unit: successes are binomial, and sum of squares equals sum
        n = np.cumsum(np.full(shape, float(per_day)), axis=-1)
        x_c = np.cumsum(rng.binomial(per_day, 0.85, shape), axis=-1).astype(float)
        x_t = np.cumsum(rng.binomial(per_day, 0.85, shape), axis=-1).astype(float)
        control, treatment = (n, x_c, x_c), (n, x_t, x_t)
        tau2 = mixing_variance(0.02)
    sequential = always_valid_p_values(*control, *treatment, tau2=tau2)
    fixed = welch_arrays(*control, *treatment).p_value
    return sequential, fixed, tau2


@pytest.mark.parametrize(("seed", "mean_metric"), [(20250301, True), (20250302, False)])
def test_daily_looks_keep_the_sequential_false_positive_rate_but_inflate_naive_peeking(seed: int,
                                                                                      mean_metric: bool) -> None:
    sequential, fixed, _ = aa_looks(seed, mean_metric)
    sequential_rate = float((sequential.min(axis=1) <= ALPHA).mean())
    peeking_rate = float((fixed < ALPHA).any(axis=1).mean())
    horizon_rate = float((fixed[:, -1] < ALPHA).mean())
    bound = ALPHA + simulation_bound(ALPHA, EXPERIMENTS)
    print(f"A/A ({'mean' if mean_metric else 'proportion'}): mSPRT {sequential_rate:.4f} (bound {bound:.4f}), "
          f"daily peeking {peeking_rate:.4f}, fixed horizon at day {DAYS} {horizon_rate:.4f}")
    assert sequential_rate <= bound
    assert peeking_rate > 2.5 * ALPHA  # 30 looks: over a quarter of A/A tests "win" at some look
    assert abs(horizon_rate - ALPHA) <= simulation_bound(ALPHA, EXPERIMENTS)  # one look at the end is calibrated


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_simulated_power_of_a_proportion_at_the_mde_matches_the_power_calculation(share: float) -> None:
    spec = ExperimentSpec("power-p", PrimaryMetric("accuracy", "proportion", baseline=0.85), mde=0.02,
                          challenger_share=share, routing_salt="s")
    size = spec.sample_size()
    rng = np.random.default_rng(7)
    x_c = rng.binomial(size.champion, 0.85, EXPERIMENTS)
    x_t = rng.binomial(size.challenger, 0.87, EXPERIMENTS)
    _, _, p, _ = two_proportion_arrays(size.champion, x_c, size.challenger, x_t)
    power = float((p < spec.alpha).mean())
    print(f"power (proportion, share {share}): simulated {power:.4f} against planned {spec.power}")
    assert abs(power - spec.power) <= 0.03


def test_simulated_power_of_a_mean_at_the_mde_matches_the_power_calculation() -> None:
    spec = ExperimentSpec("power-m", PrimaryMetric("revenue", "mean", baseline=12.0, baseline_std=4.0), mde=0.4,
                          power=0.9, routing_salt="s")
    size = spec.sample_size()
    rng = np.random.default_rng(9)
    control = normal_daily_sums(rng, (EXPERIMENTS, 1), size.champion, 12.0, 4.0)
    treatment = normal_daily_sums(rng, (EXPERIMENTS, 1), size.challenger, 12.4, 4.0)
    power = float((welch_arrays(*control, *treatment).p_value < spec.alpha).mean())
    print(f"power (mean): simulated {power:.4f} against planned {spec.power}")
    assert abs(power - spec.power) <= 0.03


def test_the_sequential_test_finds_a_real_effect_of_the_mde_and_never_calls_it_harm() -> None:
    rng = np.random.default_rng(11)
    spec = ExperimentSpec("seq", PrimaryMetric("accuracy", "proportion", baseline=0.85), mde=0.02, routing_salt="s")
    per_day = math.ceil(spec.sample_size().champion / 14)  # the planned size reached on day 14 of 30
    n = np.cumsum(np.full((EXPERIMENTS, DAYS), float(per_day)), axis=-1)
    x_c = np.cumsum(rng.binomial(per_day, 0.85, (EXPERIMENTS, DAYS)), axis=-1).astype(float)
    x_t = np.cumsum(rng.binomial(per_day, 0.87, (EXPERIMENTS, DAYS)), axis=-1).astype(float)
    p = always_valid_p_values(n, x_c, x_c, n, x_t, x_t, tau2=mixing_variance(spec.mde, spec.alpha, spec.power))
    stopped = p.min(axis=1) <= ALPHA
    wrong_way = stopped & ((x_t - x_c)[np.arange(EXPERIMENTS), np.argmax(p <= ALPHA, axis=1)] < 0)
    by_plan, by_day_30 = float((p[:, 13] <= ALPHA).mean()), float(stopped.mean())
    print(f"mSPRT power at the MDE: {by_plan:.4f} by the planned size (day 14), {by_day_30:.4f} by day 30")
    assert 0.4 < by_plan < spec.power  # the price of looking daily: less power at the planned size ...
    assert by_day_30 > 0.85  # ... recovered by running longer
    assert int(wrong_way.sum()) == 0


def test_srm_flags_a_49_51_split_of_100000_units_and_rarely_a_fair_one() -> None:
    rng = np.random.default_rng(13)
    runs, units = 4000, 100_000
    challenger = rng.binomial(units, 0.51, runs)
    skewed = srm_p_values(np.stack([units - challenger, challenger], axis=-1), [0.5, 0.5])
    fair_challenger = rng.binomial(units, 0.5, runs)
    fair = srm_p_values(np.stack([units - fair_challenger, fair_challenger], axis=-1), [0.5, 0.5])
    detected, false_alarms = float((skewed < 0.001).mean()), float((fair < 0.001).mean())
    print(f"SRM: 49/51 flagged {detected:.4f}, 50/50 flagged {false_alarms:.4f}")
    assert detected >= 0.95
    assert false_alarms <= 0.001 + simulation_bound(0.001, runs)
