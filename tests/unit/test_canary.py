"""The labelled canary: the Wilson interval against statsmodels, the config's bounds, windows and lateness,
scores overall and per slice (golden numbers), too few labels reported as such, and the breach rule's error
rates measured by simulation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from tl_platform.monitoring.canary import (
    BREACH,
    HOLDS,
    INSUFFICIENT,
    CanaryConfig,
    CanaryResult,
    is_complete,
    judge,
    score_canary,
    wilson_interval,
    window_bounds,
)

START = datetime(2025, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
LATER = END + timedelta(days=3)  # past the default 48 h lateness


def labelled(correct: int, wrong: int, **columns: Sequence[object]) -> pd.DataFrame:
    """``correct`` right answers then ``wrong`` wrong ones (predicted 1; true 1 or 0), spread over the day."""
    n = correct + wrong
    frame = pd.DataFrame({
        "ts": [START + timedelta(seconds=86_399 * i / max(n, 1)) for i in range(n)],
        "predicted": ["1"] * n,
        "true_label": ["1"] * correct + ["0"] * wrong,
    })
    for name, values in columns.items():
        frame[name] = pd.Series(list(values), index=frame.index, dtype="object")
    return frame


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99, 0.999])
@pytest.mark.parametrize(("successes", "n"), [(0, 1), (1, 1), (0, 10), (10, 10), (3, 7), (85, 100), (78, 100),
                                              (170, 200), (999, 1000), (1, 1000), (123_456, 150_000)])
def test_wilson_interval_matches_statsmodels(successes: int, n: int, confidence: float) -> None:
    low, high = wilson_interval(successes, n, confidence)
    expected_low, expected_high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert low == pytest.approx(max(0.0, expected_low), abs=1e-12)
    assert high == pytest.approx(min(1.0, expected_high), abs=1e-12)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_wilson_interval_golden_values() -> None:
    low, high = wilson_interval(85, 100)
    assert (round(low, 5), round(high, 5)) == (0.76716, 0.90694)
    assert wilson_interval(0, 10)[0] == 0.0 and round(wilson_interval(0, 10)[1], 5) == 0.27753
    assert wilson_interval(10, 10)[1] == 1.0


@pytest.mark.parametrize(("args", "message"), [
    ((1, 0), "n must be at least 1, got 0"),
    ((5, 4), r"successes must be in \[0, n=4\], got 5"),
    ((-1, 4), r"successes must be in \[0, n=4\], got -1"),
    ((1.5, 4), "successes must be an integer, got 1.5"),
    ((True, 4), "successes must be an integer, got True"),
    ((1, 4, 1.0), r"confidence must be in \(0, 1\), got 1.0"),
    ((1, 4, 0.0), r"confidence must be in \(0, 1\), got 0.0"),
])
def test_wilson_interval_refuses_bad_arguments(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilson_interval(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("slo", 1.0, r"CanaryConfig.slo must be in \(0, 1\), got 1.0"),
    ("slo", 0, r"CanaryConfig.slo must be in \(0, 1\), got 0"),
    ("slo", float("nan"), r"CanaryConfig.slo must be in \(0, 1\), got nan"),
    ("slo", "0.9", r"CanaryConfig.slo must be in \(0, 1\), got '0.9'"),
    ("confidence", 0.4, r"CanaryConfig.confidence must be in \[0.5, 0.999\], got 0.4"),
    ("confidence", 0.9999, r"CanaryConfig.confidence must be in \[0.5, 0.999\], got 0.9999"),
    ("min_labels", 0, r"CanaryConfig.min_labels must be an integer in \[1, 10000000\], got 0"),
    ("min_labels", 50.0, r"CanaryConfig.min_labels must be an integer in \[1, 10000000\], got 50.0"),
    ("min_slice_labels", -3, r"CanaryConfig.min_slice_labels must be an integer in \[1, 10000000\], got -3"),
    ("max_slices", 1001, r"CanaryConfig.max_slices must be an integer in \[1, 1000\], got 1001"),
    ("window_days", 3, r"CanaryConfig.window_days must be 1 \(daily\) or 7 \(weekly\), got 3"),
    ("window_days", True, r"CanaryConfig.window_days must be 1 \(daily\) or 7 \(weekly\), got True"),
    ("lateness_hours", -1, r"CanaryConfig.lateness_hours must be in \[0, 720\], got -1"),
    ("lateness_hours", float("inf"), r"CanaryConfig.lateness_hours must be in \[0, 720\], got inf"),
    ("breach_rule", "lower_below_slo", "CanaryConfig.breach_rule must be 'upper_below_slo' or 'point_below_slo', got 'lower"),
])
def test_canary_config_names_field_and_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanaryConfig(**{field: value})  # type: ignore[arg-type]


def test_canary_config_defaults() -> None:
    config = CanaryConfig()
    assert (config.slo, config.confidence, config.min_labels, config.min_slice_labels, config.window_days,
            config.lateness, config.breach_rule) == (0.85, 0.95, 100, 30, 1, timedelta(hours=48), "upper_below_slo")


def test_the_default_floor_detects_what_its_docstring_says() -> None:
    """At 100 labels a confident breach needs 30 or more wrong (accuracy 0.78 or lower); at 30 slice labels, 0.70."""
    config = CanaryConfig()
    assert judge(78, 100, 100, config).status == BREACH and judge(79, 100, 100, config).status == HOLDS
    assert judge(21, 30, 30, config).status == BREACH and judge(22, 30, 30, config).status == HOLDS


def test_window_bounds_daily_and_weekly_and_completeness() -> None:
    assert window_bounds(date(2025, 3, 1), 1) == (START, END)
    assert window_bounds(date(2025, 3, 1), 7) == (datetime(2025, 2, 23, tzinfo=UTC), END)  # the 7 days up to it
    assert window_bounds(date(2024, 12, 31), 7) == (datetime(2024, 12, 25, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match=r"window_days must be an integer in \[1, 366\], got 0"):
        window_bounds(date(2025, 3, 1), 0)
    lateness = timedelta(hours=48)
    assert not is_complete(END, END + lateness - timedelta(microseconds=1), lateness)
    assert is_complete(END, END + lateness, lateness)
    with pytest.raises(ValueError, match="now must be timezone-aware, got naive 2025-03-04T00:00:00"):
        is_complete(END, datetime(2025, 3, 4), lateness)


def test_a_window_that_meets_the_slo_holds() -> None:
    result = score_canary(labelled(180, 20), START, END, LATER, CanaryConfig())
    low, high = proportion_confint(180, 200, alpha=0.05, method="wilson")
    assert (result.status, result.n_labelled, result.correct, result.accuracy) == (HOLDS, 200, 180, 0.9)
    assert result.ci_low == pytest.approx(low, abs=1e-12) and result.ci_high == pytest.approx(high, abs=1e-12)
    assert result.complete and result.complete_at == END + timedelta(hours=48)
    assert result.window == "2025-03-01T00:00:00+00:00/2025-03-02T00:00:00+00:00" and not result.breached
    assert result.message == ("canary 2025-03-01: holds: accuracy 0.900 on 200 labels (95% Wilson interval 0.851 to 0.934) "
                              "meets the SLO 0.85")


def test_a_confident_drop_breaches_and_a_small_one_holds_under_the_default_rule() -> None:
    breach = score_canary(labelled(160, 40), START, END, LATER, CanaryConfig())
    assert (breach.status, breach.accuracy, round(breach.ci_high or 0, 5)) == (BREACH, 0.8, 0.84955)
    assert breach.breached and breach.message == (
        "canary 2025-03-01: breach: accuracy 0.800 on 200 labels (95% Wilson interval 0.739 to 0.850); even the upper "
        "bound is below the SLO 0.85")
    near = score_canary(labelled(168, 32), START, END, LATER, CanaryConfig())
    assert (near.status, near.accuracy) == (HOLDS, 0.84)
    assert "holds: accuracy 0.840 on 200 labels" in near.message and "below the SLO 0.85 but not confidently" in near.message
    point = score_canary(labelled(168, 32), START, END, LATER, CanaryConfig(breach_rule="point_below_slo"))
    assert point.status == BREACH and point.message.endswith("(95% Wilson interval 0.783 to 0.884) is below the SLO 0.85")


def test_too_few_labels_report_no_number() -> None:
    result = score_canary(labelled(99, 0), START, END, LATER, CanaryConfig())
    assert (result.status, result.n_labelled, result.correct) == (INSUFFICIENT, 99, 99)
    assert (result.accuracy, result.ci_low, result.ci_high) == (None, None, None)
    assert result.message == ("canary 2025-03-01: insufficient labels: 99 labelled, fewer than the 100 needed "
                              "(min_labels); no accuracy is reported")
    empty = score_canary(labelled(0, 0), START, END, LATER, CanaryConfig())
    assert (empty.status, empty.n_labelled, empty.accuracy) == (INSUFFICIENT, 0, None)
    with pytest.raises(ValueError, match="accuracy and its interval are given exactly when the status is holds or breach"):
        CanaryResult(**{**vars(result), "accuracy": 0.5})


def test_rows_without_a_true_label_are_not_labels_and_labels_compare_as_text() -> None:
    frame = labelled(100, 10)
    frame.loc[0:4, "true_label"] = None  # five of the correct ones lose their label
    frame["predicted"] = [1] * len(frame)  # a labelled file read as integers
    result = score_canary(frame, START, END, LATER, CanaryConfig())
    assert (result.n_labelled, result.correct, result.status) == (105, 95, HOLDS)
    missing = labelled(100, 0)
    missing.loc[0, "predicted"] = None  # a failed answer is never right
    assert score_canary(missing, START, END, LATER, CanaryConfig()).correct == 99


def test_an_open_window_says_when_it_completes() -> None:
    now = END + timedelta(hours=5)
    result = score_canary(labelled(180, 20), START, END, now, CanaryConfig(lateness_hours=24))
    assert not result.complete and result.complete_at == END + timedelta(hours=24)
    assert result.message.endswith("; labels may still arrive until 2025-03-03T00:00:00+00:00 (lateness 24 h)")


def test_slices_from_attributes_and_columns_with_floors_and_a_cap() -> None:
    # yelp: 90 of 100 right; imdb: 40 of 60 right (a breach); amazon: 10 of 10 (too few); 5 rows without a domain
    attributes = ([{"domain": "yelp", "device": "ios"}] * 100 + [{"domain": "imdb"}] * 60 + [{"domain": "amazon"}] * 10
                  + [None] * 5)
    frame = pd.DataFrame({
        "ts": [START] * 175, "predicted": ["1"] * 175,
        "true_label": ["1"] * 90 + ["0"] * 10 + ["1"] * 40 + ["0"] * 20 + ["1"] * 10 + ["1"] * 5,
        "attributes": attributes, "tier": ["gold"] * 80 + ["free"] * 95,
    })
    result = score_canary(frame, START, END, LATER, CanaryConfig(), slice_keys=("domain", "tier"))
    assert (result.n_labelled, result.correct, result.status) == (175, 145, HOLDS)  # 0.829, upper bound 0.878
    domains = {s.value: s for s in result.slices if s.key == "domain"}
    assert [s.name for s in result.slices] == ["domain=yelp", "domain=imdb", "domain=amazon", "domain=(none)",
                                               "tier=free", "tier=gold"]  # most labels first
    assert (domains["yelp"].status, domains["yelp"].accuracy) == (HOLDS, 0.9)
    assert (domains["imdb"].status, round(domains["imdb"].accuracy or 0, 5), round(domains["imdb"].ci_high or 0, 5)) == (
        BREACH, 0.66667, 0.77271)
    assert (domains["amazon"].status, domains["amazon"].accuracy, domains["amazon"].n_labelled) == (INSUFFICIENT, None, 10)
    assert domains["amazon"].message == ("insufficient labels: 10 labelled, fewer than the 30 needed (min_slice_labels); "
                                         "no accuracy is reported")
    assert (domains[None].n_labelled, domains[None].status) == (5, INSUFFICIENT)
    tiers = {s.value: (s.status, s.correct, s.n_labelled) for s in result.slices if s.key == "tier"}
    assert tiers == {"gold": (HOLDS, 80, 80), "free": (BREACH, 65, 95)}
    assert result.message.endswith(
        "; slices in breach: domain=imdb (0.667 on 60), tier=free (0.684 on 95); 2 of 6 slices have fewer than 30 labels")
    capped = score_canary(frame, START, END, LATER, CanaryConfig(max_slices=2), slice_keys=("domain",))
    assert [s.name for s in capped.slices] == ["domain=yelp", "domain=imdb"] and capped.slices_omitted == {"domain": 2}
    assert capped.message.endswith("; not reported: 2 more values of domain")
    with pytest.raises(ValueError, match="slice key 'region' is neither a column of labelled nor found in an attributes"):
        score_canary(frame.drop(columns="attributes"), START, END, LATER, CanaryConfig(), slice_keys=("region",))


def test_a_weekly_window_and_its_message() -> None:
    start, end = window_bounds(date(2025, 3, 7), 7)
    frame = labelled(150, 50)
    frame["ts"] = [start + timedelta(hours=i % 168) for i in range(200)]
    result = score_canary(frame, start, end, end + timedelta(days=3), CanaryConfig(window_days=7))
    assert result.status == BREACH and result.message.startswith("canary 2025-03-01 to 2025-03-07: breach: accuracy 0.750")


def test_bad_inputs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"labelled needs the columns predicted and true_label; missing \['true_label'\]"):
        score_canary(pd.DataFrame({"predicted": ["1"]}), START, END, LATER, CanaryConfig())
    outside = labelled(100, 0)
    outside.loc[3, "ts"] = END
    with pytest.raises(ValueError, match=r"labelled: 1 rows lie outside the window \[2025-03-01T00:00:00\+00:00, 2025-03-02"):
        score_canary(outside, START, END, LATER, CanaryConfig())
    with pytest.raises(ValueError, match="window_start must be before window_end"):
        score_canary(labelled(1, 0), END, START, LATER, CanaryConfig())
    with pytest.raises(ValueError, match="window_start must be timezone-aware, got naive 2025-03-01T00:00:00"):
        score_canary(labelled(1, 0), START.replace(tzinfo=None), END, LATER, CanaryConfig())


def test_json_round_trip() -> None:
    frame = labelled(150, 50, attributes=[{"domain": "yelp"}] * 120 + [{"domain": "imdb"}] * 80)
    result = score_canary(frame, START, END, END, CanaryConfig(max_slices=1), slice_keys=("domain",))
    again = CanaryResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result and again.slices_omitted == {"domain": 1}
    thin = score_canary(labelled(3, 0), START, END, LATER, CanaryConfig())
    assert CanaryResult.from_json(json.loads(json.dumps(thin.to_json()))) == thin


def test_the_default_rule_rarely_breaches_a_model_at_the_slo_and_catches_a_five_point_drop() -> None:
    """2,000 simulated windows of 1,000 labels each: at accuracy 0.85 (on the SLO) the one-sided error of a 95%
    interval is at most 2.5%; at 0.80 the breach is caught in (nearly) every window."""
    rng = np.random.default_rng(7)
    config = CanaryConfig()

    def breach_rate(accuracy: float) -> float:
        correct = rng.binomial(1000, accuracy, size=2000)
        return float(np.mean([judge(int(c), 1000, config.min_labels, config).status == BREACH for c in correct]))

    assert breach_rate(0.85) <= 0.035  # 2.5% expected; the bound leaves room for 2,000 draws' noise
    assert breach_rate(0.90) == 0.0
    assert breach_rate(0.80) >= 0.99
