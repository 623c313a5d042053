"""Always-valid inference for daily looks: the mixture sequential probability ratio test (mSPRT).

For an estimated difference D with variance V (challenger minus champion, V = var_c/n_c + var_t/n_t, plugged
in from the data), a normal mixture N(0, tau^2) over the true difference gives the likelihood ratio against
"no difference" (Johari, Pekelis and Walsh 2017; Robbins 1970)

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 D^2 / (2 V (V + tau^2)))

whose reciprocal, minimised over the looks so far, is an always-valid p-value: the chance that it ever falls
below alpha, however often one looks, is at most alpha. Inverting it gives a confidence sequence, intersected
over the looks so it only narrows. A fixed-horizon test looked at daily has no such guarantee (30 looks at
0.05 reject a true null 28% of the time in tests/unit/test_ab_simulation.py).

The mixing variance tau^2 sets which effects the test is quickest to detect. ``mixing_variance`` picks the
tau^2 that makes the confidence sequence narrowest at the planned sample size: with r = tau^2 / V the squared
half-width is V (1 + 1/r) (2 log(1/alpha) + log(1 + r)), smallest where r = 2 log(1/alpha) + log(1 + r)
(r = 8.2 at alpha 0.05), and at the planned size V = (MDE / (z_{1-alpha/2} + z_power))^2. At alpha 0.05 and
power 0.8 this is tau = 1.02 MDE: the mixture is centred on effects of about the size the experiment was
powered for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from tl_platform.experiments.ab_spec import Direction, ExperimentSpec
from tl_platform.experiments.ab_stats import ArmStats, FloatArray, welch_arrays

Decision = Literal["stop_benefit", "stop_harm", "continue", "insufficient_data"]


def optimal_variance_ratio(alpha: float) -> float:
    """r solving r = 2 log(1/alpha) + log(1 + r): the tau^2 / V at which the confidence sequence is narrowest."""
    r = 2 * math.log(1 / alpha)
    for _ in range(100):  # a contraction (derivative 1 / (1 + r) < 1): converges to machine precision quickly
        r = 2 * math.log(1 / alpha) + math.log1p(r)
    return r


def mixing_variance(mde: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """tau^2 making the confidence sequence narrowest at the sample size planned for ``mde`` (module docstring)."""
    if mde <= 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"mixing_variance: mde > 0, alpha and power in (0, 1), got {mde}, {alpha}, {power}")
    planned_variance = (mde / (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))) ** 2
    return optimal_variance_ratio(alpha) * float(planned_variance)


def spec_mixing_variance(spec: ExperimentSpec) -> float:
    return mixing_variance(spec.mde, spec.alpha, spec.power)


def log_likelihood_ratio(difference: ArrayLike, variance: ArrayLike, tau2: float) -> FloatArray:
    """log Lambda of the normal-mixture SPRT against a zero difference, element-wise (NaN where V is 0 or NaN)."""
    d, v = np.asarray(difference, dtype=np.float64), np.asarray(variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, 0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2 * v * (v + tau2)), np.nan)


def confidence_half_width(variance: ArrayLike, tau2: float, alpha: float) -> FloatArray:
    """Half-width of the 1 - alpha confidence sequence at each look (before intersecting over looks)."""
    v = np.asarray(variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) + 2 * math.log(1 / alpha)))


def always_valid_p_values(n_c: ArrayLike, sum_c: ArrayLike, sq_c: ArrayLike, n_t: ArrayLike, sum_t: ArrayLike,
                          sq_t: ArrayLike, tau2: float) -> FloatArray:
    """Always-valid p-values from cumulative sufficient statistics whose last axis is the look (day).

    p at a look is min(1, 1 / Lambda) minimised over that look and the earlier ones; a look without a
    defined variance keeps the previous value (1 before any).
    """
    welch = welch_arrays(n_c, sum_c, sq_c, n_t, sum_t, sq_t)
    log_lr = log_likelihood_ratio(welch.difference, welch.std_error**2, tau2)
    p = np.minimum(1.0, np.exp(-np.nan_to_num(log_lr, nan=-np.inf)))
    return np.minimum.accumulate(p, axis=-1)


@dataclass(frozen=True)
class DailyArms:
    """Cumulative champion and challenger statistics up to and including ``day`` (UTC)."""

    day: date
    champion: ArmStats
    challenger: ArmStats


@dataclass(frozen=True)
class SequentialLook:
    """One day's look: the cumulative difference, the confidence sequence so far, and the decision.

    ``decision`` stays at the first stop once one is reached (an mSPRT stops at its first crossing).
    """

    day: date
    n_champion: int
    n_challenger: int
    difference: float | None
    cs_low: float | None
    cs_high: float | None
    p_value: float
    decision: Decision
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "day": self.day.isoformat()}


def sequential_looks(days: Sequence[DailyArms], direction: Direction, tau2: float, alpha: float = 0.05,
                     ) -> tuple[SequentialLook, ...]:
    """The mSPRT decision of each day, given cumulative statistics in day order.

    Stop for benefit when the confidence sequence excludes zero on the better side for ``direction``, for harm
    when on the worse side; otherwise continue. A day with an arm below two units, or no variance, is
    ``insufficient_data`` (unless a stop came before).
    """
    if tau2 <= 0:
        raise ValueError(f"tau2: the mixing variance must be > 0, got {tau2}")
    ordered = [d.day for d in days]
    if ordered != sorted(ordered) or len(set(ordered)) != len(ordered):
        raise ValueError(f"days must be distinct and in order, got {[d.isoformat() for d in ordered]}")
    looks: list[SequentialLook] = []
    low, high, p_value = -math.inf, math.inf, 1.0
    stopped: tuple[Decision, str] | None = None
    for entry in days:
        c, t = entry.champion, entry.challenger
        welch = welch_arrays(c.n, c.sum, c.sum_sq, t.n, t.sum, t.sum_sq)
        variance, difference = float(welch.std_error) ** 2, float(welch.difference)
        if c.n < 2 or t.n < 2 or not variance > 0:
            waiting = f"{c.n} champion and {t.n} challenger units, variance {variance:g}: no look yet"
            decision, reason = stopped or ("insufficient_data", waiting)
            looks.append(SequentialLook(entry.day, c.n, t.n, None if c.n == 0 or t.n == 0 else difference,
                                        None if low == -math.inf else low, None if high == math.inf else high,
                                        p_value, decision, reason))
            continue
        p_value = min(p_value, math.exp(-max(float(log_likelihood_ratio(difference, variance, tau2)), 0.0)))
        half = float(confidence_half_width(variance, tau2, alpha))
        low, high = max(low, difference - half), min(high, difference + half)
        sequence = f"confidence sequence [{low:.4g}, {high:.4g}]"
        if stopped is None and p_value <= alpha:
            # p <= alpha means this look's sequence, so the intersection, excludes 0: its side is the sign
            challenger_higher = low > 0 or (high >= 0 and difference > 0)
            better = challenger_higher == (direction == "higher")
            crossing = f"always-valid p {p_value:.3g} <= alpha {alpha} on {entry.day.isoformat()}, {sequence}"
            stopped = ("stop_benefit", f"challenger better: {crossing}") if better else (
                "stop_harm", f"challenger worse: {crossing}")
        running = f"always-valid p {p_value:.3g} > alpha {alpha}; {sequence} contains 0"
        decision, reason = stopped or ("continue", running)
        looks.append(SequentialLook(entry.day, c.n, t.n, difference, low, high, p_value, decision, reason))
    return tuple(looks)
