"""The drift tests one by one: golden numbers, agreement with SciPy and with Evidently's own stat tests (same
bins, same smoothing), bad inputs; and detect_drift's thresholds, statuses and JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon as scipy_jensenshannon
from scipy.stats import chi2_contingency, chisquare, entropy, ks_2samp

from tl_platform.monitoring import drift_tests as dt
from tl_platform.monitoring.drift import DriftResult, DriftThresholds, detect_drift
from tl_platform.monitoring.reference import ReferenceConfig, build_reference

REF = [10, 20, 30, 40]
CUR = [40, 30, 20, 10]


def _additive(counts: list[int], alpha: float = 0.5) -> np.ndarray:
    array = np.asarray(counts, dtype=float)
    return (array + alpha) / (array.sum() + alpha * array.size)


class TestGoldenNumbers:
    def test_kl_is_reference_to_current_over_additively_smoothed_shares(self) -> None:
        p, q = _additive(REF), _additive(CUR)
        expected = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
        score = dt.kl_divergence(REF, CUR)
        assert score.value == pytest.approx(0.435988426305495, abs=1e-12)
        assert score.value == pytest.approx(expected, abs=1e-12)
        assert (score.test, score.threshold, score.drifted, score.p_value) == ("kl", 0.15, True, None)

    def test_psi_is_the_symmetric_sum(self) -> None:
        score = dt.psi(REF, CUR)
        kl_both = dt.kl_divergence(REF, CUR).value + dt.kl_divergence(CUR, REF).value
        assert score.value == pytest.approx(0.8719768526109903, abs=1e-12)
        assert score.value == pytest.approx(kl_both, abs=1e-12)
        assert score.drifted and score.threshold == 0.25

    def test_an_empty_current_bin_stays_finite_and_the_pseudo_count_sets_its_weight(self) -> None:
        with_empty = [0, 30, 20, 50]
        half = dt.kl_divergence(REF, with_empty).value
        tenth = dt.kl_divergence(REF, with_empty, pseudo_count=0.1).value
        assert half == pytest.approx(0.2647383666955758, abs=1e-12)
        assert tenth > half  # less smoothing, the missing bin weighs more
        assert math.isfinite(dt.psi(REF, with_empty).value)

    def test_chi_squared_of_a_symmetric_table(self) -> None:
        score = dt.chi_squared(REF, CUR)
        assert score.value == pytest.approx(40.0, abs=1e-12)  # expected 25 in each of 8 cells
        assert score.p_value == pytest.approx(1.065509033425585e-08, rel=1e-9)
        assert score.drifted

    def test_identical_distributions_score_zero(self) -> None:
        assert dt.kl_divergence(REF, REF).value == pytest.approx(0.0, abs=1e-15)
        # the same shares from twice the rows: the pseudo-count weighs half as much, a trace remains
        assert dt.kl_divergence(REF, [2 * c for c in REF]).value == pytest.approx(1.4038933624127732e-05, rel=1e-9)
        assert dt.jensen_shannon(REF, REF).value == pytest.approx(0.0, abs=1e-7)
        chi2 = dt.chi_squared(REF, REF)
        assert (chi2.value, chi2.p_value, chi2.drifted) == (0.0, 1.0, False)

    def test_jensen_shannon_of_disjoint_supports_is_its_maximum(self) -> None:
        score = dt.jensen_shannon([5, 0], [0, 7])
        assert score.value == pytest.approx(math.sqrt(math.log(2)), abs=1e-12)

    def test_one_category_cannot_shift(self) -> None:
        score = dt.chi_squared([5, 0], [9, 0])
        assert (score.value, score.p_value, score.drifted) == (0.0, 1.0, False)


class TestAgreementWithScipy:
    rng = np.random.default_rng(7)
    reference_counts = rng.integers(0, 400, size=12)
    current_counts = rng.integers(0, 400, size=12)

    def test_kl_equals_scipy_entropy_on_the_same_smoothed_shares(self) -> None:
        p, q = _additive(list(self.reference_counts)), _additive(list(self.current_counts))
        assert dt.kl_divergence(self.reference_counts, self.current_counts).value == pytest.approx(entropy(p, q), abs=1e-12)

    def test_jensen_shannon_equals_scipy(self) -> None:
        for base_counts in ([3, 0, 9, 1], list(self.reference_counts)):
            ours = dt.jensen_shannon(base_counts, self.current_counts[: len(base_counts)]).value
            theirs = scipy_jensenshannon(base_counts, self.current_counts[: len(base_counts)])
            assert ours == pytest.approx(theirs, abs=1e-12)

    def test_chi_squared_equals_scipy_contingency_and_chisquare(self) -> None:
        ours = dt.chi_squared(self.reference_counts, self.current_counts)
        table = np.vstack([self.reference_counts, self.current_counts])
        contingency = chi2_contingency(table, correction=False)
        assert ours.value == pytest.approx(contingency.statistic, rel=1e-12)
        assert ours.p_value == pytest.approx(contingency.pvalue, rel=1e-9)
        # the same statistic as a goodness-of-fit over the 2 x k cells; the fitted margins cost k degrees of freedom
        expected = contingency.expected_freq
        gof = chisquare(table.ravel(), expected.ravel(), ddof=table.shape[1])
        assert ours.value == pytest.approx(gof.statistic, rel=1e-12)
        assert ours.p_value == pytest.approx(gof.pvalue, rel=1e-9)

    def test_chi_squared_counts_categories_unseen_in_the_reference(self) -> None:
        ours = dt.chi_squared([50, 50, 0], [45, 45, 10])
        theirs = chi2_contingency(np.array([[50, 50, 0], [45, 45, 10]]), correction=False)
        assert ours.value == pytest.approx(theirs.statistic, rel=1e-12) and ours.p_value == pytest.approx(theirs.pvalue)
        assert ours.p_value < 0.01

    def test_ks_equals_scipy(self) -> None:
        reference = self.rng.normal(size=3000)
        current = self.rng.normal(0.1, 1.0, size=700)
        ours = dt.ks_test(reference, current)
        theirs = ks_2samp(reference, current)
        assert (ours.value, ours.p_value) == (pytest.approx(theirs.statistic, abs=1e-15), pytest.approx(theirs.pvalue, abs=1e-15))
        assert ours.drifted == (theirs.pvalue < 0.01)


class TestAgreementWithEvidently:
    """Evidently 0.7.23's stat tests (evidently.legacy.calculations.stattests): numeric columns are binned on
    Sturges edges over both samples, zeros smoothed its way; given those counts our functions match."""

    rng = np.random.default_rng(11)
    reference = pd.Series(rng.lognormal(4.3, 0.6, 4000))
    current = pd.Series(np.concatenate([rng.lognormal(4.6, 0.5, 1500), [40_000.0]]))  # one far value: empty bins
    ref_labels = pd.Series(rng.choice(["negative", "positive"], 800, p=[0.45, 0.55]))
    cur_labels = pd.Series(list(rng.choice(["negative", "positive"], 600, p=[0.3, 0.7])) + ["neutral"] * 5)

    def _sturges_counts(self) -> tuple[np.ndarray, np.ndarray]:
        edges = np.histogram_bin_edges(pd.concat([self.reference, self.current]).to_numpy(), bins="sturges")
        return np.histogram(self.reference, edges)[0], np.histogram(self.current, edges)[0]

    def _category_counts(self) -> tuple[np.ndarray, np.ndarray]:
        keys = sorted(set(self.ref_labels) | set(self.cur_labels))
        ref, cur = self.ref_labels.value_counts(), self.cur_labels.value_counts()
        return np.array([ref.get(k, 0) for k in keys]), np.array([cur.get(k, 0) for k in keys])

    @pytest.mark.parametrize("kind", ["numeric", "categorical"])
    def test_psi_kl_and_jensen_shannon_match(self, kind: str) -> None:
        from evidently.legacy.calculations.stattests import jensenshannon_stat_test, kl_div_stat_test, psi_stat_test
        from evidently.legacy.core import ColumnType

        if kind == "numeric":
            ref_counts, cur_counts = self._sturges_counts()
            assert (ref_counts == 0).any() and (cur_counts == 0).any()  # the smoothing is exercised
            data, column_type = (self.reference, self.current), ColumnType.Numerical
        else:
            ref_counts, cur_counts = self._category_counts()
            data, column_type = (self.ref_labels, self.cur_labels), ColumnType.Categorical
        theirs = {
            "psi": psi_stat_test(*data, column_type, 0.1).drift_score,
            "kl": kl_div_stat_test(*data, column_type, 0.1).drift_score,
            "js": jensenshannon_stat_test(*data, column_type, 0.1).drift_score,
        }
        assert dt.psi(ref_counts, cur_counts, smoothing="evidently").value == pytest.approx(theirs["psi"], abs=1e-6)
        assert dt.kl_divergence(ref_counts, cur_counts, smoothing="evidently").value == pytest.approx(theirs["kl"], abs=1e-6)
        assert dt.jensen_shannon(ref_counts, cur_counts).value == pytest.approx(theirs["js"], abs=1e-6)

    def test_ks_p_value_matches(self) -> None:
        from evidently.legacy.calculations.stattests import ks_stat_test
        from evidently.legacy.core import ColumnType

        theirs = ks_stat_test(self.reference, self.current, ColumnType.Numerical, 0.01)
        ours = dt.ks_test(self.reference.to_numpy(), self.current.to_numpy())
        assert ours.p_value == pytest.approx(theirs.drift_score, abs=1e-6)
        assert ours.drifted == theirs.drifted


def _mmd2_direct(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Unbiased squared MMD and the median-heuristic bandwidth by plain loops over pairs, for comparison."""
    pooled = np.vstack([x, y])
    d2 = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(axis=2)
    s2 = float(np.median(d2[np.triu_indices(len(pooled), k=1)]))
    k = np.exp(-d2 / (2 * s2))
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    value = (kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - n) / (n * (n - 1)) - 2 * kxy.mean()
    return float(value), math.sqrt(s2)


class TestMMD:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(120, 3))
    same = rng.normal(size=(90, 3))
    shifted = rng.normal(size=(90, 3)) + np.array([0.8, 0.0, 0.0])

    def test_statistic_and_bandwidth_match_a_direct_computation(self) -> None:
        for current in (self.same, self.shifted):
            _, score = dt.mmd_test(self.reference, current, max_rows=1000)
            value, bandwidth = _mmd2_direct(self.reference, current)
            assert score.value == pytest.approx(value, abs=1e-9)
            assert score.bandwidth == pytest.approx(bandwidth, rel=1e-12)

    def test_p_value_separates_a_shift_from_noise(self) -> None:
        null, _ = dt.mmd_test(self.reference, self.same, threshold=1e-9, max_rows=1000)
        shifted, score = dt.mmd_test(self.reference, self.shifted, threshold=1e-9, max_rows=1000)
        assert null.p_value is not None and null.p_value > 0.05 and not null.drifted
        assert shifted.p_value == pytest.approx(1 / 201) and shifted.drifted  # no permutation reached it
        assert score.permutations == 200

    def test_threshold_on_the_effect_gates_a_significant_but_small_shift(self) -> None:
        verdict, score = dt.mmd_test(self.reference, self.shifted, threshold=10.0, max_rows=1000)
        assert score.p_value < 0.01 and not verdict.drifted

    def test_rows_are_bounded_and_the_seed_repeats_the_result(self) -> None:
        big_ref, big_cur = self.rng.normal(size=(2000, 2)), self.rng.normal(size=(5000, 2))
        first, score = dt.mmd_test(big_ref, big_cur, max_rows=150, seed=4)
        again, _ = dt.mmd_test(big_ref, big_cur, max_rows=150, seed=4)
        assert (score.reference_rows, score.current_rows) == (150, 150)
        assert first == again

    def test_identical_points_give_no_drift(self) -> None:
        points = np.ones((10, 2))
        verdict, score = dt.mmd_test(points, points)
        assert (verdict.drifted, score.value, score.p_value) == (False, 0.0, 1.0)


class TestBadInputs:
    @pytest.mark.parametrize(
        ("reference", "current", "message"),
        [
            ([], [1, 2], r"reference_counts: expected a non-empty 1-d array of counts, got shape \(0,\)"),
            ([1, 2], [1, 2, 3], "reference_counts and current_counts must have the same bins, got 2 and 3"),
            ([1, -2], [1, 2], r"reference_counts: counts must be >= 0, got -2 at bin 1"),
            ([1, 2], [1, float("nan")], "current_counts: counts must be finite, got NaN or infinity at bin 1"),
            ([0, 0], [1, 2], "reference_counts: counts sum to 0"),
            ([[1, 2]], [1, 2], r"reference_counts: expected a non-empty 1-d array of counts, got shape \(1, 2\)"),
        ],
    )
    def test_counts(self, reference: list[float], current: list[float], message: str) -> None:
        for function in (dt.kl_divergence, dt.psi, dt.jensen_shannon, dt.chi_squared):
            with pytest.raises(ValueError, match=message):
                function(reference, current)

    def test_smoothing(self) -> None:
        with pytest.raises(ValueError, match="smoothing must be 'additive' or 'evidently', got 'laplace'"):
            dt.kl_divergence(REF, CUR, smoothing="laplace")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="pseudo_count must be > 0 for additive smoothing, got 0"):
            dt.psi(REF, CUR, pseudo_count=0)

    def test_values(self) -> None:
        with pytest.raises(ValueError, match=r"current: 1 values are NaN or infinite; drop them first"):
            dt.ks_test([1.0, 2.0], [1.0, float("nan")])
        with pytest.raises(ValueError, match=r"reference_sample: expected a non-empty 1-d array of values, got shape \(0,\)"):
            dt.ks_test([], [1.0])

    def test_points(self) -> None:
        with pytest.raises(ValueError, match="reference has 2 components and current 3; they must match"):
            dt.mmd_test(np.zeros((5, 2)), np.zeros((5, 3)))
        with pytest.raises(ValueError, match=r"current: expected at least 2 rows of points \(rows x components\), got shape \(1, 2\)"):
            dt.mmd_test(np.zeros((5, 2)), np.zeros((1, 2)))
        with pytest.raises(ValueError, match="reference: points contain NaN or infinity; drop those rows first"):
            dt.mmd_test(np.full((5, 2), np.nan), np.zeros((5, 2)))


# -- detect_drift --------------------------------------------------------------------------------------------


def _frames(rng: np.random.Generator, n: int, shift: float = 0.0, prior: float = 0.55) -> dict[str, np.ndarray]:
    chars = np.maximum(1, rng.lognormal(4.3 + shift, 0.6, n).round())
    return {
        "text_chars": chars,
        "token_count": np.maximum(1, (chars / 4.5).round()),
        "unknown_share": np.where(rng.random(n) < 0.8, 0.0, rng.beta(1, 20, n)),
        "truncated": chars > 200,
        "confidence": 1 - rng.beta(1, 6, n) / 2,
        "label": np.where(rng.random(n) < prior, "positive", "negative").astype(object),
        "projection_0": rng.normal(size=n),
        "projection_1": rng.normal(size=n),
    }


@pytest.fixture(scope="module")
def profile():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(_frames(rng, 3000))
    return build_reference(frame, pd.DataFrame(_frames(rng, 1200)), ReferenceConfig(sample_size=2000))


class TestDetectDrift:
    def test_a_stable_window_has_every_score_and_no_drift(self, profile) -> None:  # type: ignore[no-untyped-def]
        result = detect_drift(profile, _frames(np.random.default_rng(1), 2000))
        assert result.status == "no_drift" and not result.drifted and result.drifted_features == ()
        assert (result.rows, result.rows_used) == (2000, 2000)
        numeric, categorical = result.feature("text_chars"), result.feature("label")
        assert set(numeric.scores) == {"kl", "psi", "ks", "ks_p_value"}
        assert set(categorical.scores) == {"kl", "psi", "jensenshannon", "chi2", "chi2_p_value"}
        assert (numeric.test, numeric.threshold, categorical.test, categorical.threshold) == ("kl", 0.15, "jensenshannon", 0.1)
        assert result.multivariate is not None and result.multivariate.features == ("projection_0", "projection_1")
        assert result.summary().startswith("no drift: 0 of 8 features drifted; projection mmd2 ")

    def test_a_length_and_label_shift_drifts_and_names_the_features(self, profile) -> None:  # type: ignore[no-untyped-def]
        result = detect_drift(profile, _frames(np.random.default_rng(2), 2000, shift=0.6, prior=0.8))
        assert result.status == "drift"
        assert set(result.drifted_features) == {"text_chars", "token_count", "truncated", "label"}
        text = result.feature("text_chars")
        assert text.score is not None and text.score > 0.3 and text.p_value is not None and text.p_value < 1e-10
        assert "text_chars kl " in result.summary() and "label jensenshannon " in result.summary()

    def test_a_small_shift_on_many_rows_is_significant_but_not_drift(self, profile) -> None:  # type: ignore[no-untyped-def]
        result = detect_drift(profile, _frames(np.random.default_rng(3), 20_000, shift=0.08))
        text = result.feature("text_chars")
        assert text.p_value is not None and text.p_value < 1e-6  # KS alone would alarm
        assert text.score is not None and text.score < 0.05 and not text.drifted

    def test_too_few_rows_give_no_verdict_and_no_scores(self, profile) -> None:  # type: ignore[no-untyped-def]
        result = detect_drift(profile, _frames(np.random.default_rng(4), 150, shift=1.0))
        assert result.status == "insufficient_data" and not result.drifted
        assert result.features == () and result.multivariate is None
        assert result.summary() == "insufficient data: 150 rows, at least 200 needed; no verdict"

    def test_a_feature_with_too_few_values_is_insufficient_alone(self, profile) -> None:  # type: ignore[no-untyped-def]
        frames = _frames(np.random.default_rng(5), 1000)
        frames["confidence"] = np.where(np.arange(1000) < 900, np.nan, frames["confidence"])  # failed scorings
        result = detect_drift(profile, frames)
        confidence = result.feature("confidence")
        assert (confidence.status, confidence.rows, confidence.missing, confidence.scores) == ("insufficient_data", 100, 900, {})
        assert result.status == "no_drift"

    def test_unseen_categories_are_named_and_counted(self, profile) -> None:  # type: ignore[no-untyped-def]
        frames = _frames(np.random.default_rng(6), 1000)
        frames["label"][:300] = "neutral"
        label = detect_drift(profile, frames).feature("label")
        assert label.unseen_categories == ("neutral",) and label.drifted

    def test_per_feature_threshold_and_psi_as_the_deciding_test(self, profile) -> None:  # type: ignore[no-untyped-def]
        frames = _frames(np.random.default_rng(7), 2000, shift=0.6)
        thresholds = DriftThresholds(numeric_test="psi", per_feature={"text_chars": 50.0})
        result = detect_drift(profile, frames, thresholds)
        text, tokens = result.feature("text_chars"), result.feature("token_count")
        assert (text.test, text.threshold, text.drifted) == ("psi", 50.0, False)
        assert (tokens.test, tokens.threshold, tokens.drifted) == ("psi", 0.25, True)
        assert text.score == text.scores["psi"]

    def test_min_drifted_features_and_multivariate_votes_set_the_window_rule(self, profile) -> None:  # type: ignore[no-untyped-def]
        frames = _frames(np.random.default_rng(8), 2000, prior=0.85)  # only the label moves
        assert detect_drift(profile, frames).status == "drift"
        assert detect_drift(profile, frames, DriftThresholds(min_drifted_features=2)).status == "no_drift"
        moved = _frames(np.random.default_rng(9), 2000)
        moved["projection_0"] = moved["projection_0"] + 0.45
        moved["projection_1"] = moved["projection_1"] + 0.45
        result = detect_drift(profile, moved)
        assert result.drifted_features == () and result.multivariate is not None and result.multivariate.drifted
        assert result.status == "drift"
        assert detect_drift(profile, moved, DriftThresholds(multivariate_votes=False)).status == "no_drift"

    def test_json_round_trip_keeps_every_field(self, profile) -> None:  # type: ignore[no-untyped-def]
        result = detect_drift(profile, _frames(np.random.default_rng(10), 1000, shift=0.6), DriftThresholds(per_feature={"label": 0.2}))
        text = json.dumps(result.to_json(), allow_nan=False)
        again = DriftResult.from_json(json.loads(text))
        assert again == result
        assert json.loads(text)["drifted_features"] == list(result.drifted_features)

    def test_deciding_scores_thresholds_and_table_for_the_asset(self, profile) -> None:  # type: ignore[no-untyped-def]
        frames = _frames(np.random.default_rng(14), 1000, shift=0.6)
        frames["confidence"][:900] = np.nan
        result = detect_drift(profile, frames)
        scores, thresholds = result.deciding_scores(), result.deciding_thresholds()
        assert "confidence" not in scores and set(scores) == set(thresholds)
        assert scores["text_chars"] == result.feature("text_chars").scores["kl"] and thresholds["text_chars"] == 0.15
        assert result.multivariate is not None and scores["projection_mmd2"] == result.multivariate.mmd2
        assert thresholds["projection_mmd2"] == 0.01 and thresholds["label"] == 0.1
        table = result.markdown_table().splitlines()
        assert table[0] == "| feature | status | deciding | score | threshold | gate p | other scores |"
        assert len(table) == 2 + 8 + 1
        assert table[2].startswith("| text_chars | drift | kl | ") and "| confidence | insufficient_data | kl |  | 0.15 |  |" in table[5]

    def test_the_seed_drives_only_the_multivariate_test(self, profile) -> None:  # type: ignore[no-untyped-def]
        frames = _frames(np.random.default_rng(11), 1000)
        first, second = detect_drift(profile, frames, seed=1), detect_drift(profile, frames, seed=2)
        assert first.features == second.features
        assert detect_drift(profile, frames, seed=1) == first

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"latency_ms": np.zeros(300)}, r"current: unknown features \['latency_ms'\]; the reference has \["),
            ({"label": None}, r"current: missing features \['label'\]; the reference has \["),
            ({"confidence": np.zeros(10)}, r"current: every feature needs one value per row, got lengths \{"),
        ],
    )
    def test_bad_current(self, profile, change: dict[str, object], message: str) -> None:  # type: ignore[no-untyped-def]
        frames: dict[str, object] = dict(_frames(np.random.default_rng(12), 300))
        for key, value in change.items():
            if value is None:
                frames.pop(key)
            else:
                frames[key] = value
        with pytest.raises(ValueError, match=message):
            detect_drift(profile, frames)  # type: ignore[arg-type]

    def test_per_feature_names_must_exist(self, profile) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(ValueError, match=r"per_feature: unknown features \['lenght'\]; the reference has \["):
            detect_drift(profile, _frames(np.random.default_rng(13), 300), DriftThresholds(per_feature={"lenght": 0.2}))


class TestThresholds:
    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("kl", 0.0, r"kl must be a number in \(0, inf\), got 0.0"),
            ("psi", -1, r"psi must be a number in \(0, inf\), got -1"),
            ("jensenshannon", 0.9, r"jensenshannon must be a number in \(0, 0.8326\], got 0.9"),
            ("p_value", 1.5, r"p_value must be a number in \(0, 1\], got 1.5"),
            ("mmd_p_value", 0, r"mmd_p_value must be a number in \(0, 1\], got 0"),
            ("min_rows", 1, r"min_rows must be an integer in \[2, 1000000000000\], got 1"),
            ("mmd_rows", 10, r"mmd_rows must be an integer in \[50, 5000\], got 10"),
            ("mmd_permutations", 5, r"mmd_permutations must be an integer in \[20, 10000\], got 5"),
            ("min_drifted_features", 0, r"min_drifted_features must be an integer in \[1, 1000000\], got 0"),
            ("numeric_test", "ks", r"numeric_test must be one of \['kl', 'psi'\], got 'ks'"),
            ("categorical_test", "chi2", r"categorical_test must be one of \['jensenshannon', 'kl', 'psi'\], got 'chi2'"),
            ("per_feature", {"label": 0}, r"per_feature\['label'\] must be a number in \(0, inf\), got 0"),
            ("kl", True, r"kl must be a number in \(0, inf\), got True"),
        ],
    )
    def test_bad_values_name_the_field_and_range(self, field: str, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            DriftThresholds(**{field: value})  # type: ignore[arg-type]

    def test_from_a_service_config(self) -> None:
        thresholds = DriftThresholds.from_config({"kl": 0.2, "per_feature": {"label": 0.3, "text_chars": 0.4}}, {"label": 0.25})
        assert thresholds.kl == 0.2 and thresholds.per_feature == {"label": 0.25, "text_chars": 0.4}
        assert DriftThresholds.from_config({}) == DriftThresholds()
        with pytest.raises(ValueError, match=r"unknown drift threshold fields \['KL'\]"):
            DriftThresholds.from_config({"KL": 0.2})

    def test_defaults_and_json(self) -> None:
        thresholds = DriftThresholds()
        assert (thresholds.kl, thresholds.psi, thresholds.jensenshannon, thresholds.p_value) == (0.15, 0.25, 0.1, 0.01)
        assert (thresholds.mmd, thresholds.mmd_p_value, thresholds.min_rows) == (0.01, 0.01, 200)
        custom = DriftThresholds(per_feature={"z": 1.0, "a": 2.0}, min_rows=50)
        assert list(custom.per_feature) == ["a", "z"]
        assert DriftThresholds.from_json(json.loads(json.dumps(custom.to_json()))) == custom
        with pytest.raises(ValueError, match=r"unknown drift threshold fields \['kl_threshold'\]"):
            DriftThresholds.from_json({"kl_threshold": 0.2})
