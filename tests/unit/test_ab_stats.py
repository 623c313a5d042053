"""Fixed-horizon statistics on sufficient statistics: Welch and the two-proportion test against scipy and
statsmodels to 1e-9, the delta-method lift's coverage, degenerate inputs, SRM, slice corrections, CUPED."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from tl_platform.experiments.ab_cuped import CovariateArmStats, cuped_test
from tl_platform.experiments.ab_slices import adjust_p_values, slice_report
from tl_platform.experiments.ab_stats import (
    ArmStats,
    compare_arms,
    srm_check,
    srm_p_values,
    two_proportion_test,
    welch_test,
)


def arms_from(seed: int, n_c: int, n_t: int, mean_t: float, sd_t: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(10.0, 2.0, n_c), rng.normal(mean_t, sd_t, n_t)


class TestWelch:
    def test_pinned_golden_numbers(self) -> None:
        result = welch_test(ArmStats.of([1, 2, 3, 4, 5]), ArmStats.of([2, 4, 6, 8, 10, 12]))
        assert result.ok and result.test == "welch"
        assert result.difference == pytest.approx(4.0, abs=1e-12)
        assert round(result.statistic or 0, 5) == 2.37635
        assert round(result.df or 0, 5) == 6.97226
        assert round(result.p_value or 0, 5) == 0.04928
        assert (round(result.ci_low or 0, 5), round(result.ci_high or 0, 5)) == (0.01653, 7.98347)
        assert round(result.relative_lift or 0, 5) == 1.33333  # 7 / 3 - 1

    @pytest.mark.parametrize(("seed", "n_c", "n_t", "mean_t", "sd_t"), [
        (1, 50, 70, 10.5, 3.0), (2, 1000, 400, 10.1, 1.0), (3, 7, 3, 14.0, 6.0), (4, 20000, 20000, 10.02, 2.0)])
    def test_matches_scipy_ttest_ind_unequal_variances(self, seed: int, n_c: int, n_t: int, mean_t: float,
                                                        sd_t: float) -> None:
        control, treatment = arms_from(seed, n_c, n_t, mean_t, sd_t)
        result = welch_test(ArmStats.of(control), ArmStats.of(treatment), alpha=0.05)
        reference = stats.ttest_ind(treatment, control, equal_var=False)
        interval = reference.confidence_interval(0.95)
        assert result.statistic == pytest.approx(reference.statistic, rel=1e-9, abs=1e-12)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-12)
        assert result.df == pytest.approx(reference.df, rel=1e-9, abs=1e-12)
        assert result.ci_low == pytest.approx(interval.low, rel=1e-9, abs=1e-12)
        assert result.ci_high == pytest.approx(interval.high, rel=1e-9, abs=1e-12)
        assert result.difference == pytest.approx(treatment.mean() - control.mean(), rel=1e-9, abs=1e-12)

    def test_relative_lift_interval_covers_the_true_lift_95_percent_of_the_time(self) -> None:
        rng = np.random.default_rng(11)
        covered = 0
        for _ in range(1000):
            control, treatment = rng.normal(10.0, 3.0, 400), rng.normal(10.5, 4.0, 300)  # true lift 5%
            result = welch_test(ArmStats.of(control), ArmStats.of(treatment))
            assert result.relative_ci_low is not None and result.relative_ci_high is not None
            covered += result.relative_ci_low <= 0.05 <= result.relative_ci_high
        assert 0.93 <= covered / 1000 <= 0.97  # 95% within about 2.2 standard errors (0.0069)

    def test_no_relative_lift_when_the_control_mean_is_zero(self) -> None:
        result = welch_test(ArmStats.of([-1.0, 1.0, 0.0]), ArmStats.of([1.0, 2.0, 3.0]))
        assert result.ok and result.relative_lift is None and result.p_value is not None


class TestTwoProportion:
    @pytest.mark.parametrize(("x_c", "n_c", "x_t", "n_t"), [(120, 1000, 130, 1000), (850, 1000, 902, 1040),
                                                            (3, 40, 11, 35), (41_000, 50_000, 41_500, 50_500)])
    def test_matches_statsmodels(self, x_c: int, n_c: int, x_t: int, n_t: int) -> None:
        result = two_proportion_test(ArmStats(n_c, x_c, x_c), ArmStats(n_t, x_t, x_t))
        z, p = proportions_ztest([x_t, x_c], [n_t, n_c])  # pooled variance under H0
        low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff")
        assert result.test == "two_proportion" and result.ok
        assert result.statistic == pytest.approx(z, rel=1e-9, abs=1e-12)
        assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-12)
        assert result.ci_low == pytest.approx(low, rel=1e-9, abs=1e-12) and result.ci_high == pytest.approx(high, rel=1e-9, abs=1e-12)
        assert result.difference == pytest.approx(x_t / n_t - x_c / n_c, rel=1e-9, abs=1e-12)

    def test_pinned_golden_numbers(self) -> None:
        result = two_proportion_test(ArmStats(1000, 120, 120), ArmStats(1000, 130, 130))
        assert (round(result.statistic or 0, 5), round(result.p_value or 0, 5)) == (0.67612, 0.49896)
        assert (round(result.ci_low or 0, 5), round(result.ci_high or 0, 5)) == (-0.01898, 0.03898)
        assert round(result.relative_lift or 0, 5) == 0.08333

    def test_compare_arms_picks_the_test_from_the_kind_and_the_values(self) -> None:
        binary, fractional = ArmStats(100, 80, 80), ArmStats(100, 80, 70.5)  # per-unit accuracy over several items
        assert compare_arms("proportion", binary, binary).test == "two_proportion"
        assert compare_arms("proportion", binary, fractional).test == "welch"
        assert compare_arms("mean", binary, binary).test == "welch"


class TestDegenerate:
    @pytest.mark.parametrize(("control", "treatment", "status", "reason"), [
        (ArmStats(0, 0, 0), ArmStats(5, 3, 3), "empty_arm", "no units in the champion arm"),
        (ArmStats(0, 0, 0), ArmStats(0, 0, 0), "empty_arm", "no units in the champion and challenger arm"),
        (ArmStats(1, 1, 1), ArmStats(5, 3, 3), "too_few_units", "at least 2 units per arm are needed: champion has 1"),
        (ArmStats(4, 8, 16), ArmStats(3, 6, 12), "zero_variance", "at the same value"),
        (ArmStats(4, 8, 16), ArmStats(3, 9, 27), "zero_variance", "at different values (difference 1)"),
    ])
    def test_welch_returns_a_status_instead_of_raising(self, control: ArmStats, treatment: ArmStats, status: str,
                                                       reason: str) -> None:
        result = welch_test(control, treatment)
        assert result.status == status and reason in result.reason
        assert result.p_value is None and result.ci_low is None and not result.significant

    def test_two_proportion_degenerate_cases(self) -> None:
        all_zero = two_proportion_test(ArmStats(50, 0, 0), ArmStats(60, 0, 0))
        assert all_zero.status == "zero_variance" and all_zero.difference == 0.0
        not_binary = two_proportion_test(ArmStats(50, 20, 10), ArmStats(60, 30, 30))
        assert not_binary.status == "not_binary" and "champion arm are not all 0 or 1" in not_binary.reason
        assert two_proportion_test(ArmStats(1, 1, 1), ArmStats(9, 3, 3)).status == "too_few_units"

    def test_arm_stats_refuse_impossible_sums_and_add_up(self) -> None:
        with pytest.raises(ValueError, match="n and sum_sq must be >= 0"):
            ArmStats(-1, 0.0, 0.0)
        assert ArmStats.of([1.0, 2.0]) + ArmStats.of([3.0]) == ArmStats(3, 6.0, 14.0)
        assert ArmStats.of([1.0, 2.0, 3.0]).variance == pytest.approx(1.0) and ArmStats(1, 2.0, 4.0).variance is None


class TestSRM:
    def test_matches_scipy_chisquare_and_says_what_it_expected_and_saw(self) -> None:
        result = srm_check({"champion": 49_000, "challenger": 51_000}, {"champion": 0.5, "challenger": 0.5})
        reference = stats.chisquare([49_000, 51_000], [50_000, 50_000])
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
        assert result.statistic == pytest.approx(40.0) and result.mismatch
        assert "expected split 50.0%/50.0% (champion/challenger), observed 49.0%/51.0% (49,000/51,000 units)" in result.reason
        assert "sample ratio mismatch, the result is invalid" in result.reason

    def test_an_unequal_plan_is_respected(self) -> None:
        planned = srm_check({"champion": 9_030, "challenger": 970}, {"champion": 0.9, "challenger": 0.1})
        assert not planned.mismatch and planned.expected == {"champion": 9_000.0, "challenger": 1_000.0}
        assert planned.observed_shares == {"champion": 0.903, "challenger": 0.097}
        assert srm_check({"champion": 5_000, "challenger": 5_000}, {"champion": 0.9, "challenger": 0.1}).mismatch

    def test_no_units_and_unknown_arms(self) -> None:
        empty = srm_check({"champion": 0, "challenger": 0}, {"champion": 0.5, "challenger": 0.5})
        assert empty.status == "empty" and empty.p_value is None and not empty.mismatch
        with pytest.raises(ValueError, match="observed arms"):
            srm_check({"champion": 1}, {"champion": 0.5, "challenger": 0.5})
        assert srm_p_values([[500, 500], [400, 600]], [0.5, 0.5]).shape == (2,)


class TestSlices:
    def test_holm_and_benjamini_hochberg_by_hand_and_against_statsmodels(self) -> None:
        p = [0.01, 0.04, 0.03, 0.005]
        assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
        assert adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
        rng = np.random.default_rng(5)
        many = rng.uniform(0, 0.2, 25)
        assert adjust_p_values(many, "holm") == pytest.approx(multipletests(many, method="holm")[1], rel=1e-12)
        assert adjust_p_values(many, "bh") == pytest.approx(multipletests(many, method="fdr_bh")[1], rel=1e-12)
        with pytest.raises(ValueError, match=r"method: must be one of \['holm', 'bh'\]"):
            adjust_p_values(p, "bonferroni")  # type: ignore[arg-type]

    def test_a_slice_the_challenger_loses_is_flagged_though_it_wins_overall(self) -> None:
        slices = {
            ("domain", "imdb"): (ArmStats(4000, 3200, 3200), ArmStats(4000, 3500, 3500)),  # +7.5 points
            ("domain", "amazon"): (ArmStats(4000, 3200, 3200), ArmStats(4000, 3450, 3450)),  # +6.25 points
            ("domain", "yelp"): (ArmStats(2000, 1700, 1700), ArmStats(2000, 1560, 1560)),  # -7 points
            ("device", "watch"): (ArmStats(10, 5, 5), ArmStats(10, 1, 1)),  # too small to test
        }
        overall = compare_arms("proportion", ArmStats(10000, 8100, 8100), ArmStats(10000, 8510, 8510))
        assert overall.significant and (overall.difference or 0) > 0
        report = slice_report(slices, "proportion", "higher")
        assert [f"{e.key}={e.value}" for e in report.harmed] == ["domain=yelp"]
        by_value = {e.value: e for e in report.effects}
        assert by_value["imdb"].improved and by_value["watch"].adjusted_p is None
        assert "not tested: fewer than 30 units in an arm" in by_value["watch"].note
        assert "challenger significantly worse (holm-adjusted p = " in by_value["yelp"].note
        # Holm over the three tested slices: the smallest raw p is multiplied by 3
        smallest = min(by_value[v].result.p_value or 1 for v in ("imdb", "amazon", "yelp"))
        assert min(e.adjusted_p for e in report.effects if e.adjusted_p is not None) == pytest.approx(3 * smallest)
        lower_is_better = slice_report(slices, "proportion", "lower")
        assert [e.value for e in lower_is_better.harmed] == ["amazon", "imdb"]


class TestCuped:
    @staticmethod
    def arm(x: np.ndarray, y: np.ndarray) -> CovariateArmStats:
        return CovariateArmStats(len(x), float(y.sum()), float((y * y).sum()), float(x.sum()), float((x * x).sum()),
                                 float((x * y).sum()))

    def test_matches_the_adjustment_done_on_raw_values_and_removes_rho_squared(self) -> None:
        rng = np.random.default_rng(8)
        x_c, x_t = rng.normal(5, 2, 3000), rng.normal(5, 2, 2500)
        y_c = 1.0 + 0.8 * x_c + rng.normal(0, 1.2, 3000)  # corr(X, Y) = 1.6 / sqrt(1.6^2 + 1.44) = 0.8
        y_t = 1.1 + 0.8 * x_t + rng.normal(0, 1.2, 2500)
        result = cuped_test(self.arm(x_c, y_c), self.arm(x_t, y_t))
        within_cov = ((x_c - x_c.mean()) @ (y_c - y_c.mean()) + (x_t - x_t.mean()) @ (y_t - y_t.mean()))
        within_var = ((x_c - x_c.mean()) ** 2).sum() + ((x_t - x_t.mean()) ** 2).sum()
        theta = within_cov / within_var
        grand = np.concatenate([x_c, x_t]).mean()
        reference = stats.ttest_ind(y_t - theta * (x_t - grand), y_c - theta * (x_c - grand), equal_var=False)
        assert result.status == "ok" and result.theta == pytest.approx(theta, rel=1e-9)
        assert result.effect.statistic == pytest.approx(reference.statistic, rel=1e-7)
        assert result.effect.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
        assert result.variance_reduction == pytest.approx(0.64, abs=0.03)
        raw = welch_test(ArmStats.of(y_c), ArmStats.of(y_t))
        assert (result.effect.ci_high or 0) - (result.effect.ci_low or 0) < 0.7 * ((raw.ci_high or 0) - (raw.ci_low or 0))

    def test_a_constant_covariate_leaves_the_metric_unadjusted(self) -> None:
        y_c, y_t = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 5.0])
        ones_c, ones_t = np.ones(3), np.ones(3)
        result = cuped_test(self.arm(ones_c, y_c), self.arm(ones_t, y_t))
        assert result.status == "no_adjustment" and result.theta == 0.0
        assert result.effect.p_value == pytest.approx(stats.ttest_ind(y_t, y_c, equal_var=False).pvalue, rel=1e-9)
