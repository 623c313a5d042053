"""What happened and why, in sentences: the terminal's closing summary and the report's first section."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_platform.story.progress import format_duration
from tl_platform.story.scenario import StoryConfig
from tl_platform.story.state import StoryState

NESTED_STAGES = ("retrain",)  # timed inside the simulated days, so not added to the total again


def _span(days: Sequence[dict[str, Any]]) -> str:
    if len(days) == 1:
        return f"day {days[0]['index'] + 1} ({days[0]['day']})"
    return f"days {days[0]['index'] + 1}-{days[-1]['index'] + 1} ({days[0]['day']} to {days[-1]['day']})"


def narrative(state: StoryState, config: StoryConfig) -> list[str]:
    """One sentence per chapter of the story, from the records alone (a resumed story tells the same)."""
    sentences: list[str] = []
    if state.plan is not None:
        sentences.append(f"The transfer plan recommended {state.plan.get('recommended')} (runner-up: "
                         f"{state.plan.get('runner_up')}), from a relative domain distance of "
                         f"{_fmt_plain(state.plan.get('relative_domain_distance'))} (far from 1.4).")
    if state.champion_version:
        sentences.append(f"The task model was exported through its gates and v{state.champion_version} served as "
                         "champion.")
    for phase, what in (("steady", f"{config.domain} reviews, the model's own domain"),
                        ("benign", f"a benign shift to {config.benign_domain} reviews"),
                        ("harmful", (f"a harmful shift: {config.harmful_domain} reviews in slang, "
                                     f"{config.slang_share:.0%} of traffic"))):
        days = [d for d in state.days if d["phase"] == phase]
        if not days:
            continue
        drifted = sum(1 for d in days if d["drifted"])
        breached = sum(1 for d in days if d["canary_status"] == "breach")
        alerts = sum(len(d["alerts"]) for d in days)
        sentences.append(f"{_span(days).capitalize()}, {what}: drift on {drifted} of {len(days)} days, the canary "
                         f"breached its SLO on {breached}; {alerts} alert(s) sent.")
    if state.retrain is not None:
        forgetting = state.retrain.get("forgetting") or {}
        window = next((d for d in state.days if d["day"] == state.retrain["window"]), None)
        why = "drift and a canary breach"
        if window is not None and window.get("canary_accuracy") is not None:
            moved = (", ".join(window["drifted_features"]) if window["drifted_features"]
                     else "the embedding projection as a whole")
            why = (f"drift ({moved}) and a canary breach (accuracy "
                   f"{window['canary_accuracy']:.3f}, upper bound {window['ci_high']:.3f} below the SLO)")
        sentences.append(
            f"In window {state.retrain['window']}, {why} together triggered a retrain on that day's feedback "
            f"plus replay; candidate v{state.retrain['candidate_version']} "
            f"gained {_fmt(forgetting.get('fresh_gain_points'))} points on the window's held-out rows and moved "
            f"{_fmt(forgetting.get('previous_change_points'))} points on the old test set.")
    elif any(d["phase"] == "harmful" for d in state.days):
        sentences.append("No retrain was triggered.")
    experiment = state.experiment
    if experiment is not None:
        verdict = experiment.get("verdict")
        if verdict in ("ship", "roll_back", "invalid"):
            sentences.append(f"A/B experiment {experiment['id']} (from {experiment['start_day']}, "
                             f"{config.shadow_days} shadow day(s) first) decided on {experiment.get('decided_day')}: "
                             f"{str(verdict).replace('_', ' ')}: " + "; ".join(experiment.get("reasons") or []) + ".")
        else:
            sentences.append(f"A/B experiment {experiment['id']} was still running when the story ended "
                             f"({experiment.get('summary') or 'no decision day yet'}).")
    if state.days:
        last = state.days[-1]
        challenger = (f", challenger v{last['challenger']} on {float(last['challenger_share'] or 0):.0%} of users"
                      if last.get("challenger") else "")
        sentences.append(f"At the end, champion v{last['champion']} serves{challenger}.")
    return sentences


def summary_lines(state: StoryState, config: StoryConfig, report: Path, log_path: Path, seconds: float,
                  home: Path | None = None) -> list[str]:
    """The closing summary; ``home`` is a TLP_HOME other than the default, which the UI commands then need too."""
    lines = ["", "What happened:"]
    command = f"TLP_HOME={home} .venv/bin/tlp" if home is not None else ".venv/bin/tlp"
    lines += [f"  - {sentence}" for sentence in narrative(state, config)]
    total = sum(seconds for name, seconds in state.stage_seconds.items() if name not in NESTED_STAGES)
    lines += [
        "",
        f"Report: {report}  (open it in a browser)",
        f"Dagster UI: `{command} ui`, then http://127.0.0.1:3000 (runs, assets, checks, the sensor's ticks)",
        f"MLflow UI: `{command} mlflow-ui`, then http://127.0.0.1:5000 (runs, metrics, registered versions)",
        f"Dagster's event stream: {log_path}",
        f"Time: {format_duration(total)} in all stages"
        + (f" ({format_duration(seconds)} in this command, which resumed the story)" if seconds < total - 1 else "")
        + ": " + ", ".join(f"{name} {format_duration(s)}" + (" (within the days)" if name in NESTED_STAGES else "")
                           for name, s in state.stage_seconds.items()),
    ]
    return lines


def _fmt(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:+.1f}" if isinstance(value, float) and abs(value) < 100 else f"{value}"
    return "n/a" if value is None else str(value)


def _fmt_plain(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
