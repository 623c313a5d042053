"""The shadow comparison in the database: agreement, latency and the disagreeing texts, on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.serving_fixtures import log_url, started_log
from tl_platform.experiments.ab_shadow import compare_shadow
from tl_platform.serving.log_schema import LogTables
from tl_platform.serving.prediction_log import SERVED, SHADOW, PredictionLog, PredictionRow

__all__ = ["log_url", "started_log"]
DAY = datetime(2026, 4, 1, tzinfo=UTC)


def row(request: int, role: str, label: str, latency: float, experiment: str = "exp-s", error: str | None = None,
        day_offset: int = 0) -> PredictionRow:
    return PredictionRow(
        request_id=f"{request:032x}", item_index=0, role=role, ts=DAY + timedelta(days=day_offset, minutes=request),
        unit_id=f"u{request % 7}", variant="challenger" if role == SHADOW else "champion",
        model_version="2" if role == SHADOW else "1", label=None if error else label,
        confidence=None if error else 0.5 + request / 1000, probabilities=None, latency_ms=latency, text_chars=10,
        token_count=3, unknown_share=0.0, truncated=False, projection=(), text=f"text {request}",
        experiment_id=experiment, routing_salt="s", challenger_share=0.0, error=error)


@pytest.fixture
def log(started_log: PredictionLog) -> PredictionLog:
    return started_log


def test_agreement_latency_failures_and_the_most_confident_disagreements(log: PredictionLog) -> None:
    rows = []
    for request in range(100):
        rows.append(row(request, SERVED, "1", 10.0))
        if request < 90:  # 10 requests were never shadow-scored (a full shadow queue drops them)
            error = "boom" if request in (5, 6) else None
            rows.append(row(request, SHADOW, "0" if request % 10 == 0 else "1", 14.0, error=error))
    rows.append(row(500, SERVED, "1", 10.0, experiment="other"))
    rows.append(row(500, SHADOW, "0", 10.0, experiment="other"))
    rows.append(row(600, SERVED, "1", 10.0, day_offset=2))  # outside the window
    rows.append(row(600, SHADOW, "0", 10.0, day_offset=2))
    log.submit(rows).result(timeout=30)
    tables = LogTables(log.metadata, log.predictions, log.feedback)
    result = compare_shadow(log.engine, tables, "exp-s", DAY, DAY + timedelta(days=1), max_examples=3)
    assert result.pairs == 90 and result.challenger_errors == 2
    assert result.agreeing == 90 - 9 - 2  # requests 0, 10, ..., 80 disagree; the two failures do not agree
    assert result.agreement_rate == pytest.approx(79 / 90)
    assert result.latency_difference_ms == pytest.approx(4.0)
    assert [d.text for d in result.disagreements] == ["text 80", "text 70", "text 60"]  # most confident first
    assert all((d.champion_label, d.challenger_label) == ("1", "0") for d in result.disagreements)
    assert "| text 80 | 1 | 0 (0.58) |" in result.disagreement_table()
    assert "79" not in result.summary() and "87.8%" in result.summary()


def test_an_empty_window_says_so_and_bad_bounds_are_refused(log: PredictionLog) -> None:
    tables = LogTables(log.metadata, log.predictions, log.feedback)
    empty = compare_shadow(log.engine, tables, "exp-s", DAY, DAY + timedelta(days=1))
    assert empty.pairs == 0 and empty.agreement_rate is None and empty.summary().startswith("no request")
    with pytest.raises(ValueError, match="end must be after start"):
        compare_shadow(log.engine, tables, "exp-s", DAY, DAY)
    with pytest.raises(ValueError, match="max_examples must be at least 0"):
        compare_shadow(log.engine, tables, "exp-s", DAY, DAY + timedelta(days=1), max_examples=-1)
