"""One finished day of the story as a plain record: the traffic, what the monitors and the trigger said, the A/B."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tl_platform.simulation.traffic import DayOutcome
from tl_platform.story.scenario import StoryDay


def day_record(story_day: StoryDay, outcomes: Sequence[DayOutcome], drift: Mapping[str, Any] | None,
               canary: Mapping[str, Any] | None, alerts: Sequence[str], retrain: Mapping[str, Any] | None,
               decision: Mapping[str, Any] | None, serving: Mapping[str, object]) -> dict[str, Any]:
    """The day as the report and the summary read it; ``line`` is the terminal's one-line account."""
    requests = sum(o.requests for o in outcomes)
    record: dict[str, Any] = {
        "index": story_day.index, "day": story_day.day.isoformat(), "weekday": story_day.weekday,
        "phase": story_day.phase, "requests": requests, "feedback": sum(o.feedback for o in outcomes),
        "served_accuracy": sum(o.correct for o in outcomes) / max(requests, 1),
        "drifted": None if drift is None else drift.get("drifted"),
        "drift_status": None if drift is None else drift.get("drift_status"),
        "drifted_features": list((drift or {}).get("drifted_features") or []),
        "drift_scores": dict((drift or {}).get("scores") or {}),
        "drift_thresholds": dict((drift or {}).get("thresholds") or {}),
        "canary_status": None if canary is None else canary.get("canary_status"),
        "canary_accuracy": _number((canary or {}).get("accuracy")),
        "ci_low": _number((canary or {}).get("ci_low")), "ci_high": _number((canary or {}).get("ci_high")),
        "n_labelled": (canary or {}).get("n_labelled"), "slo": _number((canary or {}).get("slo")),
        "alerts": list(alerts), "retrain_window": None if retrain is None else retrain.get("window"),
        "candidate_version": None if retrain is None else retrain.get("candidate_version"),
        "ab": _decision(decision), "champion": serving.get("champion_version"),
        "challenger": serving.get("challenger_version"), "challenger_share": serving.get("challenger_share"),
        "shadow": serving.get("shadow"),
    }
    record["line"] = day_line(record)
    return record


def day_line(record: Mapping[str, Any]) -> str:
    drift = ("drift: " + (", ".join(record["drifted_features"][:3]) or "embedding")) if record["drifted"] else (
        "no drift" if record["drifted"] is False else f"drift: {record['drift_status'] or 'not judged'}")
    if record["canary_accuracy"] is not None:
        canary = (f"canary {record['canary_status']} {record['canary_accuracy']:.3f} "
                  f"[{record['ci_low']:.3f}, {record['ci_high']:.3f}]")
    else:
        canary = f"canary {record['canary_status'] or 'not judged'}"
    events = []
    if record["retrain_window"]:
        events.append(f"RETRAIN -> candidate v{record['candidate_version']}")
    elif record["alerts"]:
        events.append(f"{len(record['alerts'])} alert(s)")
    if record["ab"] is not None:
        events.append(f"A/B {record['ab']['verdict']}")
    return " · ".join([drift, canary, *events])


def _decision(decision: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not decision:
        return None
    primary = decision.get("primary") or {}
    return {"verdict": decision.get("verdict"), "summary": decision.get("summary"),
            "reasons": list(decision.get("reasons") or []), "days_run": decision.get("days_run"),
            "difference": _number(primary.get("difference")), "ci_low": _number(primary.get("ci_low")),
            "ci_high": _number(primary.get("ci_high")), "units": decision.get("units")}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def points_text(value: object) -> str:
    return f"{value:+.1f} points" if isinstance(value, int | float) else "n/a"
