"""Reading a monitoring window from the real prediction log (SQLite, and Postgres when it is up): which rows,
NULLs and booleans, the bounded sample and its row count; served_versions; the window's drift and its
Evidently report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving_fixtures import log_url
from tl_platform.monitoring.drift import detect_drift
from tl_platform.monitoring.evidently_report import matched_preset_options, write_evidently_report
from tl_platform.monitoring.reference import ReferenceConfig, build_reference
from tl_platform.monitoring.window import read_window, served_versions
from tl_platform.serving.prediction_log import SERVED, SHADOW, PredictionLog, PredictionRow

__all__ = ["log_url"]  # the fixture, imported for pytest
DAY = datetime(2025, 3, 1, tzinfo=UTC)
END = DAY + timedelta(days=1)
NUMERIC = ("text_chars", "confidence", "projection_0", "projection_1")
CATEGORICAL = ("label", "truncated")


def prediction(i: int, ts: datetime, version: str = "3", role: str = SERVED, variant: str = "champion",
               chars: int = 40, label: str | None = "positive", confidence: float | None = 0.9,
               projection: tuple[float, ...] = (0.5, -1.0), truncated: bool = False) -> PredictionRow:
    return PredictionRow(
        request_id=f"r{i:07d}", item_index=0, role=role, ts=ts, unit_id=None, variant=variant, model_version=version,
        label=label, confidence=confidence, probabilities=None, latency_ms=3.0, text_chars=chars, token_count=chars // 4,
        unknown_share=0.0, truncated=truncated, projection=projection, text=None, experiment_id=None,
        routing_salt="s", challenger_share=0.0,
    )


def write(log: PredictionLog, rows: list[PredictionRow]) -> None:
    log.start()
    try:
        for start in range(0, len(rows), 1000):
            log.submit(rows[start:start + 1000]).result(timeout=60)
    finally:
        log.stop()


@pytest.fixture
def log(log_url: tuple[str, str]):  # type: ignore[no-untyped-def]
    url, prefix = log_url
    opened = PredictionLog(url, table_prefix=prefix)
    yield opened
    opened.close()


def test_the_window_holds_one_versions_served_rows_in_start_inclusive_end_exclusive(log: PredictionLog) -> None:
    write(log, [
        prediction(0, DAY, chars=10),  # at start: in
        prediction(1, DAY + timedelta(hours=5), chars=20, label=None, confidence=None, projection=()),  # failed scoring
        prediction(2, DAY + timedelta(hours=6), chars=30, truncated=True),
        prediction(3, END, chars=99),  # at end: out
        prediction(4, DAY - timedelta(microseconds=1), chars=98),  # before: out
        prediction(5, DAY + timedelta(hours=7), version="4", variant="challenger", chars=97),  # other version
        prediction(6, DAY + timedelta(hours=7), role=SHADOW, variant="challenger", chars=96),  # shadow
    ])
    window = read_window(log, "3", DAY, END, NUMERIC, CATEGORICAL)
    assert (window.rows, window.rows_read, window.stride, window.sampled) == (3, 3, 1, False)
    order = np.argsort(window.columns["text_chars"])
    assert window.columns["text_chars"][order].tolist() == [10.0, 20.0, 30.0]
    confidence = window.columns["confidence"][order]
    assert confidence[0] == 0.9 and np.isnan(confidence[1])
    assert np.isnan(window.columns["projection_1"][order][1]) and window.columns["projection_1"][order][0] == -1.0
    assert window.columns["label"][order].tolist() == ["positive", None, "positive"]
    assert window.columns["truncated"][order].tolist() == ["false", "false", "true"]
    naive = read_window(log, "3", DAY.replace(tzinfo=None), END.replace(tzinfo=None), NUMERIC, CATEGORICAL)
    assert naive.rows == 3  # naive times are UTC


def test_served_versions_counts_served_rows_per_version(log: PredictionLog) -> None:
    write(log, [
        *(prediction(i, DAY + timedelta(minutes=i)) for i in range(5)),
        *(prediction(10 + i, DAY + timedelta(minutes=i), version="4", variant="challenger") for i in range(2)),
        prediction(20, DAY + timedelta(minutes=1), role=SHADOW, version="4", variant="challenger"),
        prediction(21, END, version="5"),
    ])
    assert served_versions(log, DAY, END) == {"3": 5}
    assert served_versions(log, DAY, END, variant=None) == {"3": 5, "4": 2}


def test_a_large_window_is_sampled_with_an_exact_row_count(log: PredictionLog) -> None:
    rng = np.random.default_rng(0)
    chars = rng.integers(10, 300, 6000)
    rows = []
    for i in range(6000):  # served and shadow rows alternate, as when a shadow challenger scores every request
        ts = DAY + timedelta(seconds=10 * i)
        rows.append(prediction(2 * i, ts, chars=int(chars[i])))
        rows.append(prediction(2 * i + 1, ts, role=SHADOW, chars=1))
    write(log, rows)
    window = read_window(log, "3", DAY, END, NUMERIC, CATEGORICAL, max_rows=1000)
    assert (window.rows, window.stride, window.sampled) == (6000, 6, True)
    assert 850 <= window.rows_read <= 1150  # about 6000 / 6 served rows; no shadow row came in
    assert window.columns["text_chars"].min() >= 10
    assert abs(window.columns["text_chars"].mean() - chars.mean()) < 8  # the full mean, within ~3 standard errors
    other = read_window(log, "3", DAY, END, NUMERIC, CATEGORICAL, max_rows=1000, seed=1)
    assert not np.array_equal(np.sort(other.columns["text_chars"]), np.sort(window.columns["text_chars"]))
    again = read_window(log, "3", DAY, END, NUMERIC, CATEGORICAL, max_rows=1000)
    assert np.array_equal(np.sort(again.columns["text_chars"]), np.sort(window.columns["text_chars"]))
    every = read_window(log, "3", DAY, END, NUMERIC, CATEGORICAL, max_rows=None)
    assert (every.rows, every.rows_read) == (6000, 6000)


def test_bad_requests_name_what_is_wrong(log: PredictionLog) -> None:
    with pytest.raises(ValueError, match="end must be after start, got start=2025-03-02T00:00:00"):
        read_window(log, "3", END, DAY, NUMERIC, CATEGORICAL)
    with pytest.raises(ValueError, match=r"column 'lenght' is not in the prediction log; it has \["):
        read_window(log, "3", DAY, END, ("lenght",), CATEGORICAL)
    with pytest.raises(ValueError, match="max_rows must be at least 1 or None, got 0"):
        read_window(log, "3", DAY, END, NUMERIC, CATEGORICAL, max_rows=0)
    with pytest.raises(ValueError, match=r"numeric and categorical must name distinct columns, at least one, got \['label', 'label'\]"):
        read_window(log, "3", DAY, END, ("label",), ("label",))
    with pytest.raises(ValueError, match="end must be after start"):
        served_versions(log, DAY, DAY)


def _reference_frames(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    chars = rng.integers(10, 300, n)
    inputs = pd.DataFrame({"text_chars": chars, "token_count": chars // 4, "unknown_share": np.zeros(n), "truncated": chars > 280})
    model = pd.DataFrame({"confidence": rng.uniform(0.5, 1.0, n), "label": rng.choice(["negative", "positive"], n),
                          "projection_0": rng.normal(size=n), "projection_1": rng.normal(size=n)})
    return inputs, model


def test_a_logged_window_is_scored_and_reported(log: PredictionLog, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    profile = build_reference(*_reference_frames(rng, 2000), ReferenceConfig(sample_size=1000))
    write(log, [
        prediction(i, DAY + timedelta(seconds=30 * i), chars=int(rng.integers(150, 400)), label=str(rng.choice(["negative", "positive"])),
                   confidence=float(rng.uniform(0.5, 1.0)), projection=(float(rng.normal()), float(rng.normal())),
                   truncated=bool(rng.random() < 0.5))
        for i in range(1500)
    ])
    window = read_window(log, "3", DAY, END, profile.numeric_features, profile.categorical_features)
    result = detect_drift(profile, window)
    assert result.rows == 1500 and result.status == "drift"
    assert {"text_chars", "token_count", "truncated"} <= set(result.drifted_features)
    assert "label" not in result.drifted_features and "confidence" not in result.drifted_features

    frame = window.frame()
    assert list(frame.columns) == [*profile.numeric_features, *profile.categorical_features] and len(frame) == 1500
    path = write_evidently_report(profile.sample_frame(), frame, tmp_path / "report" / "drift.html", max_rows=500)
    html = path.read_text(encoding="utf-8")
    assert path.stat().st_size > 10_000 and "<html" in html.lower() and "text_chars" in html


def test_report_inputs_are_checked(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(200.0), "b": ["x", "y"] * 100})
    with pytest.raises(ValueError, match=r"current: missing columns \['b'\]; it has \['a'\]"):
        write_evidently_report(frame, frame[["a"]], tmp_path / "r.html")
    with pytest.raises(ValueError, match="max_rows must be at least 100, got 10"):
        write_evidently_report(frame, frame, tmp_path / "r.html", max_rows=10)
    assert matched_preset_options() == {"num_method": "kl_div", "num_threshold": 0.15, "cat_method": "jensenshannon",
                                        "cat_threshold": 0.1}
