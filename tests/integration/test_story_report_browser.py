"""The story's HTML report as a person sees it: rendered by Chromium, its pictures legible, saved as an artefact."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

from tests.browser import ink_share, screenshot
from tests.story_fixtures import story_day_record
from tl_platform.story.report import write_story_report
from tl_platform.story.scenario import shortened
from tl_platform.story.state import StoryState

pytestmark = pytest.mark.integration


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return int(width), int(height)


def test_the_report_renders_in_a_browser_with_legible_pictures(tmp_path: Path) -> None:
    config = shortened()
    state = StoryState(fingerprint="f", config=config.to_json(), champion_version="1",
                       plan={"recommended": "LoRA fine-tuning", "runner_up": "full fine-tuning",
                             "relative_domain_distance": 1.08})
    decision = {"verdict": "ship", "summary": "ship", "reasons": ["challenger better"], "days_run": 2,
                "primary": {"difference": 0.06, "ci_low": 0.02, "ci_high": 0.1}}
    retrain = {"window": "2026-11-03", "candidate_version": "2", "forgetting": {}}
    state.days = [story_day_record(0, "steady", False, "holds", 0.95), story_day_record(1, "benign", True, "holds", 0.9),
                  story_day_record(2, "harmful", True, "breach", 0.78, retrain=retrain),
                  story_day_record(3, "harmful", True, "breach", 0.8, decision=decision)]
    state.retrain = retrain
    state.stage_seconds = {"models": 200.0, "simulated days": 300.0}
    page = write_story_report(state, config, tmp_path / "report.html", None, {"state": "story.json"})

    pictures = [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page.read_text())]
    assert len(pictures) == 4
    for picture in pictures:  # drawn at 110 dpi, at least 8 inches wide: axis labels of 8 points stay legible
        width, height = _png_size(picture)
        assert width >= 850 and height >= 300, (width, height)

    shot = screenshot(page.as_uri(), "story-report.png")
    assert shot.stat().st_size > 100_000
    assert ink_share(shot) > 0.05  # text and pictures on the page, not a blank or an error page
