"""The proposal report: the plan, the cost comparison and the ROI curve in one HTML page with the plots inside.

The three assets write their records and plots into their output directories; the report reads the directories
the Dagster catalogue names (the newest plan and ROI curve, and the cost report that ROI curve read), so it
shows exactly what the Dagster UI shows.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_platform.economics.documents import cost_document, plan_document, roi_document
from tl_platform.economics.render import to_html

PLAN_RECORD = "transfer_plan.json"
COST_RECORD = "cost_report.json"
COST_PLOT = "cost_comparison.png"
ROI_RECORD = "roi_curve.json"
ROI_PLOT = "roi_curve.png"
# the newest plan, the cost report the newest ROI curve was computed from, and that ROI curve (resources.catalogue)
PROPOSAL_CATALOGUE_SPECS = ("transfer_plan", "roi_curve:cost_report", "roi_curve")
MATERIALISE_HINT = (
    "materialise transfer_plan, cost_report and roi_curve first (the Dagster UI, or `tlp report --materialise "
    "--owner NAME`)"
)


class ProposalIncompleteError(FileNotFoundError):
    """An artefact of the proposal was never materialised; the message names it and how to make it."""


def write_record(directory: Path, name: str, payload: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path


@dataclass(frozen=True)
class Proposal:
    plan: dict[str, Any]
    costs: dict[str, Any]
    roi: dict[str, Any]
    cost_plot: bytes
    roi_plot: bytes


def _read(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise ProposalIncompleteError(f"{directory} holds no {name}; {MATERIALISE_HINT}")
    return path


def load_proposal(plan_dir: Path, cost_dir: Path, roi_dir: Path) -> Proposal:
    """The proposal from the three assets' output directories; ProposalIncompleteError names what is missing."""
    return Proposal(
        plan=json.loads(_read(plan_dir, PLAN_RECORD).read_text()),
        costs=json.loads(_read(cost_dir, COST_RECORD).read_text()),
        roi=json.loads(_read(roi_dir, ROI_RECORD).read_text()),
        cost_plot=_read(cost_dir, COST_PLOT).read_bytes(),
        roi_plot=_read(roi_dir, ROI_PLOT).read_bytes(),
    )


REPORT_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #ddd; }
section { margin-bottom: 2.5em; }
"""


def png_image(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def render_proposal_html(proposal: Proposal, title: str = "Transfer-learning proposal") -> str:
    """One self-contained page: plan with its reasons, cost comparison with its plot, ROI curve with its plot."""
    sections = (
        ("1. The plan", to_html(plan_document(proposal.plan)), ""),
        ("2. The cost comparison", to_html(cost_document(proposal.costs)), png_image(proposal.cost_plot, "cost comparison")),
        ("3. The return on investment", to_html(roi_document(proposal.roi)), png_image(proposal.roi_plot, "ROI curve")),
    )
    body = "\n".join(
        f"<section><h2>{html.escape(name)}</h2>\n{picture}\n{content}</section>" for name, content, picture in sections
    )
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{REPORT_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
