"""The main command end to end, on its shortened story (``tlp run --quick``: the same code path, seven days).

MiniLM is fine-tuned on amazon reviews and served over HTTP; a day of amazon traffic, a day of yelp reviews two sentences long (benign:
drift, the canary holds, an alert), then five days of imdb reviews in slang (harmful: drift and a breach, a
retrain, its candidate shadowed for a day and then A/B tested against the champion from the next day, 1,500
requests a day from 600 users, and shipped). The command is first stopped with Ctrl-C (SIGINT) inside the plan's
Dagster run, then run again and killed (SIGKILL, the whole process group) while it replays the second day, and
run again: it must resume there, without counting that day twice or retraining twice, and end with the report;
afterwards `tlp ui` lists the trigger's ticks.

Measured for the story this configuration shortens (closed_loop/, bench/retrain_recovery.py): the amazon
model scores about 0.70 on held-out slang reviews and the retrain recovers part of it (+4 to +14 points on
held-out slang from run to run), which two days of 1,000 slang requests detect (an MDE of 0.1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster._core.scheduler.instigation import TickStatus

from sensors.retrain_trigger import TRIGGER_SENSOR_NAME
from sensors.simulated_ticks import SimulatedTicks
from tests.browser import artefact_path, ink_share, page_text_has, screenshot, webdriver
from tests.server_process import free_port
from tl_platform.serving.log_schema import log_tables

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# The export gates are tested on their own (tests/unit/test_export.py); on a shared CI machine a noisy p99 or
# one borderline INT8 flip would fail this loop for reasons it is not about.
GATES = {"latency_requests": 50, "latency_budget_p99_ms": 500.0}
OPS = {"ops": {"exported_model": {"config": GATES}, "candidate_model": {"config": GATES}}}


def _tlp(home: Path, config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TLP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("TLP_PREDICTION_LOG_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([str(Path(sys.executable).parent / "tlp"), "run", "--quick", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _state(home: Path) -> dict[str, Any]:
    path = home / "story" / "story.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.timeout(3600)  # two MiniLM trainings and six days; about 12 minutes on 2 quiet cores
def test_the_story_alerts_on_the_benign_shift_retrains_on_the_harmful_one_ships_and_resumes_after_ctrl_c_and_a_kill(
    tmp_path: Path,
) -> None:
    home, config = tmp_path / "home", tmp_path / "ops.json"
    config.write_text(json.dumps(OPS))
    # Ctrl-C inside the plan's Dagster run: a clean stop that says where to resume, no run left running
    stopped = _tlp(home, config)
    assert stopped.stdout is not None
    seen = [stopped.stdout.readline()]
    while seen[-1] and not seen[-1].startswith("▸ transfer plan") and len(seen) < 100:
        seen.append(stopped.stdout.readline())  # the opening line (and any import-time warning) come first
    assert seen[-1].startswith("▸ transfer plan"), seen
    time.sleep(3)
    os.killpg(stopped.pid, signal.SIGINT)
    told, _ = stopped.communicate(timeout=300)
    assert stopped.returncode == 130, told
    assert "stopped in the transfer plan: everything before it is kept. Run the same command again" in told, told
    stopped_runs = dg.DagsterInstance.from_config(str(home / "dagster_home")).get_run_records()
    assert stopped_runs and all(r.dagster_run.status != dg.DagsterRunStatus.STARTED for r in stopped_runs)

    first = _tlp(home, config)
    deadline = time.monotonic() + 2400
    while time.monotonic() < deadline and first.poll() is None:
        state = _state(home)
        if len(state.get("days", [])) == 1 and state.get("replaying") == 1:
            time.sleep(3)  # in the middle of the second day's requests
            break
        time.sleep(1)
    assert first.poll() is None, f"the first run ended before day 2: {first.communicate()[0][-3000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)

    second = _tlp(home, config)
    output, _ = second.communicate(timeout=3000)
    assert second.returncode == 0, output[-5000:]
    assert "resuming the story" in output and "removed" in output, output[:3000]
    assert "What happened:" in output and "report.html" in output

    state = _state(home)
    days = state["days"]
    assert [d["phase"] for d in days] == ["steady", "benign", "harmful", "harmful", "harmful", "harmful", "harmful"]
    steady, benign, harmful = days[0], days[1], days[2]
    assert steady["canary_status"] == "holds", steady["line"]
    assert benign["drifted"] is True and benign["canary_status"] == "holds", benign["line"]
    assert benign["alerts"], benign  # one signal alone alerts and retrains nothing
    assert harmful["drifted"] is True and harmful["canary_status"] == "breach", harmful["line"]
    assert harmful["retrain_window"] == harmful["day"] and state["retrain"]["window"] == harmful["day"]
    assert [d["retrain_window"] for d in days].count(None) == len(days) - 1  # one retrain in the story

    candidate = state["retrain"]["candidate_version"]
    assert state["experiment"]["verdict"] == "ship", state["experiment"]
    assert days[-1]["champion"] == candidate, days[-1]
    assert any(d["shadow"] for d in days), "the candidate was shadowed before the split"

    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    retrains = instance.get_run_records(dg.RunsFilter(job_name="retrain_job", statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert len(retrains) == 1
    # every day's evaluation of the trigger is a tick of the sensor (what `tlp ui` shows in its history); the
    # one that requested the retrain names its run
    ticks = SimulatedTicks(instance, TRIGGER_SENSOR_NAME).ticks()
    assert len(ticks) == len(days), [tick.status for tick in ticks]
    assert [tick.run_ids for tick in ticks if tick.status == TickStatus.SUCCESS] == [[retrains[0].dagster_run.run_id]]

    # the killed day was removed and sent again whole: the log holds each day's answers once
    tables = log_tables("")
    engine = sa.create_engine(f"sqlite:///{home / 'predictions.db'}")
    with engine.connect() as connection:
        served = connection.execute(sa.select(sa.func.count()).select_from(tables.predictions)
                                    .where(tables.predictions.c.role == "served")).scalar_one()
    engine.dispose()
    assert served == sum(d["requests"] for d in days)

    _the_sensor_page_of_tlp_ui_lists_the_ticks(home, retrains[0].dagster_run.run_id)

    report = home / "story" / "report.html"
    assert report.read_text().count("data:image/png;base64,") >= 6  # traffic, drift, canary, A/B, cost, ROI
    assert "ship" in report.read_text()
    shot = screenshot(report.as_uri(), "story-report-e2e.png")
    assert ink_share(shot) > 0.05


def _the_sensor_page_of_tlp_ui_lists_the_ticks(home: Path, retrain_run_id: str) -> None:
    """`tlp ui` on the story's home, in Chromium: the trigger's page lists the story's ticks and its retrain run."""
    port = free_port()
    env = {**os.environ, "TLP_HOME": str(home)}
    ui = subprocess.Popen([str(Path(sys.executable).parent / "tlp"), "ui", "--port", str(port)], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    session = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        session = webdriver()
        session.get(f"http://127.0.0.1:{port}/locations/tl_platform/sensors/{TRIGGER_SENSOR_NAME}")
        page_text_has(session, ["Latest tick", "1 run requested", retrain_run_id[:8], "0 runs requested"])
        session.save_screenshot(str(artefact_path("story-sensor-ticks.png")))
    finally:
        if session is not None:
            session.quit()
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)
