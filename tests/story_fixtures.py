"""A finished story day built from given monitor results, for the story's report and summary tests."""

from __future__ import annotations

from datetime import date, timedelta

from tl_platform.simulation.traffic import DayOutcome
from tl_platform.story.records import day_record
from tl_platform.story.scenario import StoryDay


def story_day_record(index: int, phase: str, drifted: bool, canary: str, accuracy: float, **extra: object) -> dict[str, object]:
    day = StoryDay(index, date(2026, 11, 1) + timedelta(days=index), phase)  # type: ignore[arg-type]
    drift = {"drifted": drifted, "drift_status": "drifted" if drifted else "ok",
             "drifted_features": ["embedding"] if drifted else [], "scores": {"embedding": 0.3, "length": 0.01},
             "thresholds": {"embedding": 0.1, "length": 0.1}}
    canary_meta = {"canary_status": canary, "accuracy": accuracy, "ci_low": accuracy - 0.03,
                   "ci_high": accuracy + 0.03, "n_labelled": 400, "slo": 0.85}
    outcome = DayOutcome(day.day, 500, 400, round(500 * accuracy))
    return day_record(day, [outcome], drift, canary_meta, list(extra.get("alerts", [])),  # type: ignore[call-overload]
                      extra.get("retrain"), extra.get("decision"),  # type: ignore[arg-type]
                      {"champion_version": "1", "challenger_version": None, "challenger_share": 0.0, "shadow": False})
