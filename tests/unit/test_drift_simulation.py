"""The default thresholds' statistical behaviour, measured by simulation on seeded synthetic traffic.

Traffic resembles the served model's features: lognormal text length (log-mean 4.3, sd 0.6), tokens ~ chars /
4.5 + noise, unknown share 0 for 80% of texts, truncation above 40 tokens, confidence in [0.5, 1], a binary
label (positive share 0.55) and a 4-component projection (sd 1, 0.7, 0.5, 0.4). The reference is built as at
export: 4,000 input rows, 1,500 model rows. Every window is scored with DriftThresholds() (min_rows 200).

- No shift: the share of windows called "drift" at n = 200 (min_rows), 1,000 and 5,000 rows per window.
- A stated shift at n = 1,000: the share called "drift", for each of a length shift (log-length +0.4: texts
  1.49x longer), a label-prior shift (positive share 0.55 -> 0.72) and a projection shift (+0.35 sd on every
  component, which no single component's KL sees).
- A small shift on many rows (log-length +0.08, n = 5,000): KS alone alarms on nearly every window, the
  effect-size rule on almost none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tl_platform.monitoring.drift import DriftThresholds, detect_drift
from tl_platform.monitoring.reference import ReferenceProfile, build_reference
from tl_platform.simulation.features import synthetic_features

traffic = synthetic_features


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(20_250_301)
    return build_reference(pd.DataFrame(traffic(rng, 4000)), pd.DataFrame(traffic(rng, 1500)))


def drift_rate(profile: ReferenceProfile, n: int, windows: int, seed: int, **shift: float) -> float:
    thresholds = DriftThresholds()
    alarms = 0
    for window in range(windows):
        rng = np.random.default_rng([seed, window])
        alarms += detect_drift(profile, traffic(rng, n, **shift), thresholds, seed=window).drifted
    return alarms / windows


@pytest.mark.parametrize(("n", "windows"), [(200, 100), (1000, 100), (5000, 60)])
def test_windows_without_shift_alarm_on_at_most_5_percent(profile: ReferenceProfile, n: int, windows: int) -> None:
    rate = drift_rate(profile, n, windows, seed=n)
    print(f"no shift, n={n}: false-alarm rate {rate:.3f} over {windows} windows")
    assert rate <= 0.05


@pytest.mark.parametrize(
    "shift",
    [{"length_shift": 0.4}, {"positive_share": 0.72}, {"projection_shift": 0.35}],
    ids=["length x1.49", "label prior 0.55->0.72", "projection +0.35 sd"],
)
def test_a_stated_shift_at_1000_rows_is_detected_in_at_least_95_percent(profile: ReferenceProfile, shift: dict[str, float]) -> None:
    rate = drift_rate(profile, 1000, 40, seed=7, **shift)
    print(f"shift {shift}, n=1000: detection rate {rate:.3f} over 40 windows")
    assert rate >= 0.95


def test_a_small_shift_on_many_rows_is_significant_yet_not_drift(profile: ReferenceProfile) -> None:
    ks_alarms = drifts = 0
    for window in range(20):
        result = detect_drift(profile, traffic(np.random.default_rng([99, window]), 5000, length_shift=0.08), seed=window)
        text = result.feature("text_chars")
        assert text.p_value is not None and text.score is not None
        ks_alarms += text.p_value < 0.01
        drifts += result.drifted
    print(f"log-length +0.08, n=5000: KS p < 0.01 in {ks_alarms}/20 windows, drift in {drifts}/20")
    assert ks_alarms >= 18 and drifts <= 1
