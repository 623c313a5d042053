"""The story's HTML report: what happened and why, the pictures, the decisions, the costs; one self-contained page."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

from tl_platform.economics.documents import cost_document, roi_document
from tl_platform.economics.render import to_html
from tl_platform.economics.report import REPORT_STYLE, Proposal, png_image
from tl_platform.story import figures
from tl_platform.story.progress import format_duration
from tl_platform.story.scenario import StoryConfig
from tl_platform.story.state import StoryState
from tl_platform.story.summary import narrative

EXTRA_STYLE = """
.phase-benign { background: #eef5ff; } .phase-harmful { background: #fff0ea; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-size: 1.2em; font-weight: 600; }
"""


def render_story_html(state: StoryState, config: StoryConfig, proposal: Proposal | None, links: dict[str, str]) -> str:
    days = state.days
    sections = [
        ("What happened", "<ol>" + "".join(f"<li>{html.escape(s)}</li>" for s in narrative(state, config)) + "</ol>"),
        ("Traffic", png_image(figures.volume_chart(days), "requests per day") if days else "<p>No day simulated.</p>"),
        ("Drift per feature", png_image(figures.drift_heatmap(days), "drift per feature over time") if days else ""),
        ("Canary accuracy against the SLO", png_image(figures.canary_chart(days, _slo(days)), "canary accuracy") if days else ""),
        ("The A/B experiment", _experiment_html(state) + (png_image(figures.ab_effect_chart(days), "A/B effect")
                                                          if days else "")),
    ]
    if proposal is not None:
        sections.append(("Cost comparison", png_image(proposal.cost_plot, "cost comparison")
                         + to_html(cost_document(proposal.costs))))
        sections.append(("Return on investment", png_image(proposal.roi_plot, "ROI curve")
                         + to_html(roi_document(proposal.roi))))
    sections.append(("Day by day", _day_table(state)))
    sections.append(("Where to look next", _links_html(state, links)))
    body = "\n".join(f"<section><h2>{html.escape(title)}</h2>\n{content}</section>" for title, content in sections)
    title = "tl_platform: the closed loop, simulated"
    subtitle = (f"{len(days)} simulated days, seed {config.seed}; written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{REPORT_STYLE}{EXTRA_STYLE}</style></head>\n<body><h1>{title}</h1><p>{html.escape(subtitle)}</p>"
            f"\n{body}\n</body></html>\n")


def write_story_report(state: StoryState, config: StoryConfig, path: Path, proposal: Proposal | None,
                       links: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(render_story_html(state, config, proposal, links), encoding="utf-8")
    temporary.replace(path)
    return path


def _slo(days: list[dict[str, object]]) -> float | None:
    found = next((d["slo"] for d in days if d.get("slo") is not None), None)
    return float(found) if isinstance(found, int | float) else None


def _experiment_html(state: StoryState) -> str:
    experiment = state.experiment
    if experiment is None:
        return "<p>No experiment ran: no candidate was retrained.</p>"
    verdict = str(experiment.get("verdict") or "not decided").replace("_", " ")
    reasons = experiment.get("reasons") or []
    return (f"<p class=\"verdict\">{html.escape(experiment['id'])}: {html.escape(verdict)}</p>"
            f"<p>{html.escape(str(experiment.get('summary') or ''))}</p>"
            + ("<ul>" + "".join(f"<li>{html.escape(str(r))}</li>" for r in reasons) + "</ul>" if reasons else ""))


def _day_table(state: StoryState) -> str:
    header = ("day", "phase", "requests", "feedback", "answered correctly", "drifted features", "canary",
              "serving", "events")
    rows = []
    for d in state.days:
        canary = (f"{d['canary_status']} {d['canary_accuracy']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
                  if d.get("canary_accuracy") is not None else str(d.get("canary_status")))
        serving = f"v{d['champion']}" + (f" / v{d['challenger']} {float(d['challenger_share'] or 0):.0%}"
                                         + (" shadow" if d.get("shadow") else "") if d.get("challenger") else "")
        events = [*d["alerts"]]
        if d.get("retrain_window"):
            events.insert(0, f"retrain -> candidate v{d['candidate_version']}")
        if d.get("ab"):
            events.append(f"A/B {d['ab']['verdict']}: {d['ab'].get('summary') or ''}")
        cells = (f"{d['day']} {d['weekday']}", d["phase"], str(d["requests"]), str(d["feedback"]),
                 f"{d['served_accuracy']:.3f}", ", ".join(d["drifted_features"]) or "-", canary, serving,
                 "<br>".join(html.escape(str(e))[:400] for e in events) or "-")
        rows.append(f"<tr class=\"phase-{d['phase']}\">" + "".join(
            f"<td>{c if i == 8 else html.escape(c)}</td>" for i, c in enumerate(cells)) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(rows) + "</table>")


def _links_html(state: StoryState, links: dict[str, str]) -> str:
    timings = "".join(f"<tr><td>{html.escape(name)}</td><td class=\"num\">{format_duration(s)}</td></tr>"
                      for name, s in state.stage_seconds.items())
    items = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in links.items())
    return f"<ul>{items}</ul><h3>Time per stage</h3><table><tr><th>stage</th><th>time</th></tr>{timings}</table>"
