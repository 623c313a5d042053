"""CUPED: variance reduction with a pre-period covariate (Deng et al. 2013), on sufficient statistics.

Each unit's metric Y is replaced by ``Y - theta (X - mean X)``, X being the same unit's value before the
experiment (which the treatment cannot have changed). ``theta = cov(X, Y) / var(X)`` is pooled within arms,
so the treatment effect on Y does not leak into it; the adjusted means keep their expectation difference and
lose the share ``corr(X, Y)^2`` of their variance. Units without a pre-period value should carry X = 0 (the
caller's choice, documented where the covariate is aggregated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tl_platform.experiments.ab_stats import ArmStats, EffectResult, welch_test


@dataclass(frozen=True)
class CovariateArmStats:
    """Per arm: units, and sums of Y, Y^2, X, X^2 and X*Y over them."""

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float

    @property
    def metric(self) -> ArmStats:
        return ArmStats(self.n, self.sum_y, self.sum_y2)

    def centred(self) -> tuple[float, float, float]:
        """Within-arm sums of squares and cross-products about the arm's means: (Sxx, Syy, Sxy)."""
        if self.n == 0:
            return 0.0, 0.0, 0.0
        return (self.sum_x2 - self.sum_x**2 / self.n, self.sum_y2 - self.sum_y**2 / self.n,
                self.sum_xy - self.sum_x * self.sum_y / self.n)


@dataclass(frozen=True)
class CupedResult:
    """The adjusted comparison; ``variance_reduction`` is 1 - var(adjusted) / var(raw), pooled within arms."""

    status: Literal["ok", "no_adjustment"]
    reason: str
    theta: float
    variance_reduction: float
    control: ArmStats
    treatment: ArmStats
    effect: EffectResult


def _adjusted(arm: CovariateArmStats, theta: float, grand_mean_x: float) -> ArmStats:
    """ArmStats of Y - theta (X - grand_mean_x), expanded from the arm's sums."""
    shift = theta * grand_mean_x
    total = arm.sum_y - theta * arm.sum_x + arm.n * shift
    # sum (y - t x + s)^2 = Syy + t^2 Sxx + n s^2 - 2t Sxy + 2s Sy - 2ts Sx, on the raw (uncentred) sums
    total_sq = (arm.sum_y2 + theta**2 * arm.sum_x2 + arm.n * shift**2 - 2 * theta * arm.sum_xy
                + 2 * shift * arm.sum_y - 2 * theta * shift * arm.sum_x)
    return ArmStats(arm.n, total, max(total_sq, 0.0))


def cuped_test(control: CovariateArmStats, treatment: CovariateArmStats, alpha: float = 0.05) -> CupedResult:
    """Welch's test on the CUPED-adjusted metric; without covariate variance, the unadjusted test."""
    sxx_c, syy_c, sxy_c = control.centred()
    sxx_t, syy_t, sxy_t = treatment.centred()
    sxx, syy, sxy = sxx_c + sxx_t, syy_c + syy_t, sxy_c + sxy_t
    if sxx <= 0 or syy <= 0 or control.n + treatment.n < 4:
        effect = welch_test(control.metric, treatment.metric, alpha)
        return CupedResult("no_adjustment", "the covariate (or the metric) has no within-arm variance: "
                           "unadjusted Welch test", 0.0, 0.0, control.metric, treatment.metric, effect)
    theta = sxy / sxx
    grand_mean_x = (control.sum_x + treatment.sum_x) / (control.n + treatment.n)
    adjusted_c, adjusted_t = _adjusted(control, theta, grand_mean_x), _adjusted(treatment, theta, grand_mean_x)
    reduction = 1.0 - (syy - theta * sxy) / syy  # = pooled within-arm corr(X, Y)^2
    effect = welch_test(adjusted_c, adjusted_t, alpha)
    correlation = sxy / math.sqrt(sxx * syy)
    return CupedResult("ok", f"theta {theta:.4g}, within-arm corr(X, Y) {correlation:.3f}", theta, reduction,
                       adjusted_c, adjusted_t, effect)
