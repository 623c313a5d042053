"""Fixed-horizon A/B statistics on sufficient statistics: Welch's t-test, the two-proportion z-test, and the
sample-ratio-mismatch check.

Every input is an ``ArmStats`` (units, sum and sum of squares of the per-unit metric), as the database
aggregates it; nothing here sees a raw row. The difference is challenger minus champion (treatment minus
control). Degenerate inputs (an empty arm, fewer than two units, no variance) give a result whose ``status``
and ``reason`` say why, never an exception. The array functions (``welch_arrays``, ``two_proportion_arrays``,
``srm_p_values``) are the same formulas on NumPy arrays, so simulations of thousands of experiments run on
the code the decision uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from tl_platform.experiments.ab_spec import MetricKind

FloatArray = NDArray[np.float64]
Status = Literal["ok", "empty_arm", "too_few_units", "zero_variance", "not_binary"]
TestName = Literal["welch", "two_proportion"]
SRM_P_THRESHOLD = 0.001  # a split this unlikely under the planned one invalidates the experiment


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm: ``n`` units, the sum and the sum of squares of their metric values."""

    n: int
    sum: float
    sum_sq: float

    def __post_init__(self) -> None:
        if self.n < 0 or self.sum_sq < 0 or not (math.isfinite(self.sum) and math.isfinite(self.sum_sq)):
            raise ValueError(f"ArmStats: n and sum_sq must be >= 0 and sums finite, got {self}")

    @classmethod
    def of(cls, values: ArrayLike) -> ArmStats:
        array = np.asarray(values, dtype=np.float64)
        return cls(int(array.size), float(array.sum()), float(np.square(array).sum()))

    def __add__(self, other: ArmStats) -> ArmStats:
        return ArmStats(self.n + other.n, self.sum + other.sum, self.sum_sq + other.sum_sq)

    @property
    def mean(self) -> float | None:
        return self.sum / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        """Sample variance (n - 1 in the denominator); None below two units."""
        if self.n < 2:
            return None
        return max(self.sum_sq - self.sum * self.sum / self.n, 0.0) / (self.n - 1)

    @property
    def is_binary(self) -> bool:
        """Whether the values can all be 0 or 1: for those, sum equals sum of squares."""
        return 0 <= self.sum <= self.n and math.isclose(self.sum, self.sum_sq, rel_tol=1e-12, abs_tol=1e-9)

    def to_json(self) -> dict[str, float]:
        return {"n": self.n, "sum": self.sum, "sum_sq": self.sum_sq}


@dataclass(frozen=True)
class EffectResult:
    """Challenger (treatment) against champion (control) on one metric.

    ``difference`` = treatment mean - control mean with its two-sided ``1 - alpha`` interval;
    ``relative_lift`` = difference / control mean with a delta-method interval (None when the control mean is
    0). Fields the status leaves undefined are None.
    """

    test: TestName
    status: Status
    reason: str
    alpha: float
    control: ArmStats
    treatment: ArmStats
    control_mean: float | None = None
    treatment_mean: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    relative_lift: float | None = None
    relative_ci_low: float | None = None
    relative_ci_high: float | None = None
    statistic: float | None = None
    df: float | None = None
    p_value: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("control", "treatment")}
        return {**data, "control": self.control.to_json(), "treatment": self.treatment.to_json(),
                "significant": self.significant}


# -- array formulas -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WelchArrays:
    difference: FloatArray
    std_error: FloatArray
    statistic: FloatArray
    df: FloatArray
    p_value: FloatArray


def _arm_variance(n: FloatArray, total: FloatArray, total_sq: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(total_sq - total * total / n, 0.0) / (n - 1)


def welch_arrays(n_c: ArrayLike, sum_c: ArrayLike, sq_c: ArrayLike,
                 n_t: ArrayLike, sum_t: ArrayLike, sq_t: ArrayLike) -> WelchArrays:
    """Welch's t-test, element-wise; the degrees of freedom are Welch-Satterthwaite's. NaN where undefined."""
    nc, sc, qc = (np.asarray(a, dtype=np.float64) for a in (n_c, sum_c, sq_c))
    nt, st, qt = (np.asarray(a, dtype=np.float64) for a in (n_t, sum_t, sq_t))
    with np.errstate(divide="ignore", invalid="ignore"):
        var_mean_c = _arm_variance(nc, sc, qc) / nc  # variance of the arm's mean
        var_mean_t = _arm_variance(nt, st, qt) / nt
        difference = st / nt - sc / nc
        variance = var_mean_c + var_mean_t
        std_error = np.sqrt(variance)
        statistic = difference / std_error
        df = variance**2 / (var_mean_c**2 / (nc - 1) + var_mean_t**2 / (nt - 1))
        p_value = 2.0 * stats.t.sf(np.abs(statistic), df)
    return WelchArrays(difference, std_error, statistic, df, p_value)


def two_proportion_arrays(n_c: ArrayLike, x_c: ArrayLike, n_t: ArrayLike, x_t: ArrayLike,
                          ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(difference, pooled z, two-sided p, unpooled standard error of the difference), element-wise."""
    nc, xc, nt, xt = (np.asarray(a, dtype=np.float64) for a in (n_c, x_c, n_t, x_t))
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, pt = xc / nc, xt / nt
        pooled = (xc + xt) / (nc + nt)
        z = (pt - pc) / np.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / nt))  # pooled under H0: equal rates
        p_value = 2.0 * stats.norm.sf(np.abs(z))
        unpooled_se = np.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)  # the interval makes no H0 assumption
    return pt - pc, z, p_value, unpooled_se


def srm_p_values(observed: ArrayLike, expected_shares: ArrayLike) -> FloatArray:
    """Chi-squared goodness-of-fit p-values of unit counts (last axis: arms) against the planned shares."""
    counts = np.asarray(observed, dtype=np.float64)
    shares = np.asarray(expected_shares, dtype=np.float64)
    expected = counts.sum(axis=-1, keepdims=True) * shares / shares.sum()
    return np.asarray(stats.chisquare(counts, expected, axis=-1).pvalue, dtype=np.float64)


# -- scalar results -------------------------------------------------------------------------------------------


def _degenerate(test: TestName, control: ArmStats, treatment: ArmStats, alpha: float) -> EffectResult | None:
    def result(status: Status, reason: str) -> EffectResult:
        return EffectResult(test, status, reason, alpha, control, treatment, control.mean, treatment.mean)

    empty = [name for name, arm in (("champion", control), ("challenger", treatment)) if arm.n == 0]
    if empty:
        return result("empty_arm", f"no units in the {' and '.join(empty)} arm")
    few = [f"{name} has {arm.n}" for name, arm in (("champion", control), ("challenger", treatment)) if arm.n < 2]
    if few:
        return result("too_few_units", f"at least 2 units per arm are needed: {', '.join(few)}")
    return None


def _relative(control: ArmStats, treatment: ArmStats, var_mean_c: float, var_mean_t: float, alpha: float,
              ) -> tuple[float | None, float | None, float | None]:
    """Lift (mean_t / mean_c - 1) and its delta-method interval: Var(t/c) ~ Vt/c^2 + t^2 Vc/c^4."""
    mean_c, mean_t = control.mean, treatment.mean
    if mean_c is None or mean_t is None or mean_c == 0:
        return None, None, None
    ratio = mean_t / mean_c
    std_error = math.sqrt(var_mean_t / mean_c**2 + mean_t**2 * var_mean_c / mean_c**4)
    z = float(stats.norm.ppf(1 - alpha / 2))
    return ratio - 1, ratio - 1 - z * std_error, ratio - 1 + z * std_error


def welch_test(control: ArmStats, treatment: ArmStats, alpha: float = 0.05) -> EffectResult:
    """Welch's unequal-variance t-test of treatment minus control, with t-based and delta-method intervals."""
    degenerate = _degenerate("welch", control, treatment, alpha)
    if degenerate is not None:
        return degenerate
    arrays = welch_arrays(control.n, control.sum, control.sum_sq, treatment.n, treatment.sum, treatment.sum_sq)
    difference, std_error = float(arrays.difference), float(arrays.std_error)
    base = EffectResult("welch", "ok", "", alpha, control, treatment, control.mean, treatment.mean, difference)
    if std_error == 0.0:
        return _zero_variance(base)
    df = float(arrays.df)
    half_width = float(stats.t.ppf(1 - alpha / 2, df)) * std_error
    assert control.variance is not None and treatment.variance is not None
    lift, lift_low, lift_high = _relative(control, treatment, control.variance / control.n,
                                          treatment.variance / treatment.n, alpha)
    return EffectResult("welch", "ok", "", alpha, control, treatment, control.mean, treatment.mean, difference,
                        difference - half_width, difference + half_width, lift, lift_low, lift_high,
                        float(arrays.statistic), df, float(arrays.p_value))


def _zero_variance(base: EffectResult) -> EffectResult:
    same = "at the same value" if base.difference == 0 else f"at different values (difference {base.difference:g})"
    return EffectResult(base.test, "zero_variance", f"every unit of both arms has one value, {same}: no test "
                        f"is defined", base.alpha, base.control, base.treatment, base.control_mean,
                        base.treatment_mean, base.difference)


def two_proportion_test(control: ArmStats, treatment: ArmStats, alpha: float = 0.05) -> EffectResult:
    """Two-proportion z-test (pooled variance under H0) with an unpooled Wald interval of the difference.

    Each arm's values must be 0/1 (``sum`` successes of ``n``); see ``ArmStats.is_binary``.
    """
    degenerate = _degenerate("two_proportion", control, treatment, alpha)
    if degenerate is not None:
        return degenerate
    not_binary = [name for name, arm in (("champion", control), ("challenger", treatment)) if not arm.is_binary]
    if not_binary:
        return EffectResult("two_proportion", "not_binary", f"values of the {' and '.join(not_binary)} arm are not "
                            f"all 0 or 1 (sum != sum of squares): use welch_test", alpha, control, treatment,
                            control.mean, treatment.mean)
    difference, z, p_value, unpooled_se = (float(v) for v in two_proportion_arrays(
        control.n, control.sum, treatment.n, treatment.sum))
    base = EffectResult("two_proportion", "ok", "", alpha, control, treatment, control.mean, treatment.mean, difference)
    if not math.isfinite(z):  # both arms all 0 or all 1
        return _zero_variance(base)
    half_width = float(stats.norm.ppf(1 - alpha / 2)) * unpooled_se
    pc, pt = control.sum / control.n, treatment.sum / treatment.n
    lift, lift_low, lift_high = _relative(control, treatment, pc * (1 - pc) / control.n, pt * (1 - pt) / treatment.n,
                                          alpha)
    return EffectResult("two_proportion", "ok", "", alpha, control, treatment, pc, pt, difference,
                        difference - half_width, difference + half_width, lift, lift_low, lift_high, z, None, p_value)


def compare_arms(kind: MetricKind, control: ArmStats, treatment: ArmStats, alpha: float = 0.05) -> EffectResult:
    """The spec's test for a metric: a proportion whose units each carry one 0/1 value gets the two-proportion
    test; per-unit accuracy over several labelled items (values between 0 and 1), and every mean, get Welch."""
    if kind == "proportion" and control.is_binary and treatment.is_binary:
        return two_proportion_test(control, treatment, alpha)
    return welch_test(control, treatment, alpha)


# -- sample ratio mismatch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SRMResult:
    """Observed units per arm against the planned split; ``mismatch`` invalidates the experiment."""

    status: Literal["ok", "empty"]
    observed: dict[str, int]
    expected: dict[str, float]
    expected_shares: dict[str, float]
    statistic: float | None
    p_value: float | None
    threshold: float
    reason: str

    @property
    def mismatch(self) -> bool:
        return self.p_value is not None and self.p_value < self.threshold

    @property
    def observed_shares(self) -> dict[str, float]:
        total = sum(self.observed.values())
        return {arm: count / total if total else 0.0 for arm, count in self.observed.items()}

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "observed_shares": self.observed_shares, "mismatch": self.mismatch}


def srm_check(observed: Mapping[str, int], expected_shares: Mapping[str, float],
              threshold: float = SRM_P_THRESHOLD) -> SRMResult:
    """Chi-squared test of units per arm against the planned shares (``{"champion": 0.5, "challenger": 0.5}``)."""
    if set(observed) != set(expected_shares):
        raise ValueError(f"observed arms {sorted(observed)} differ from expected arms {sorted(expected_shares)}")
    arms = list(expected_shares)  # in the caller's order: champion first reads naturally
    total_share = sum(expected_shares.values())
    shares = {arm: expected_shares[arm] / total_share for arm in arms}
    counts = {arm: int(observed[arm]) for arm in arms}
    total = sum(counts.values())
    expected = {arm: total * shares[arm] for arm in arms}
    planned = "/".join(f"{shares[a]:.1%}" for a in arms)
    if total == 0:
        return SRMResult("empty", counts, expected, shares, None, None, threshold,
                         f"no units yet; expected split {planned} ({'/'.join(arms)})")
    p_value = float(srm_p_values([counts[a] for a in arms], [shares[a] for a in arms]))
    statistic = sum((counts[a] - expected[a]) ** 2 / expected[a] for a in arms)
    seen = "/".join(f"{counts[a] / total:.1%}" for a in arms)
    verdict = (f"p = {p_value:.3g} < {threshold}: sample ratio mismatch, the result is invalid" if p_value < threshold
               else f"p = {p_value:.3g} >= {threshold}: consistent with the plan")
    reason = (f"expected split {planned} ({'/'.join(arms)}), observed {seen} "
              f"({'/'.join(f'{counts[a]:,}' for a in arms)} units); chi-squared {statistic:.2f}, {verdict}")
    return SRMResult("ok", counts, expected, shares, statistic, p_value, threshold, reason)
