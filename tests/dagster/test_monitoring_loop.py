"""The monitoring loop's Dagster side on the tiny BERT: daily drift and canary partitions, the trigger sensor, the retrain gate.

Traffic goes through the serving app itself (in process) with simulated event times. The tiny model's own
accuracy is near chance, so which windows breach is set by the SLO each canary run is given; the real-data
story (MiniLM, a benign and a harmful shift) is tests/e2e/test_main_story.py (the main command).
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from assets import (
    TRANSFER_ASSETS,
    canary_accuracy,
    candidate_model,
    deployment,
    exported_model,
    feature_drift,
    retrained_model,
)
from resources import AlertRoute, PredictionLogSource, RetrainPolicy
from sensors.retrain_trigger import drift_canary_trigger, latest_metadata
from tests.dagster.conftest import Stages, tiny_run_config
from tl_platform.data import load_labelled_text
from tl_platform.data.bundled import bundled_source
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.simulation.traffic import replay, sample_day
from tl_platform.tracking.mlflow_tracker import registered_versions

IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
FIRST = date.today() - timedelta(days=9)
WINDOWS = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
# per window: corruption of the traffic, and the SLO its canary is judged against
PLAN = {WINDOWS[0]: (0.0, 0.2), WINDOWS[1]: (0.4, 0.2), WINDOWS[2]: (0.4, 0.99), WINDOWS[3]: (0.4, 0.99)}


@pytest.fixture(scope="module")
def loop(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Stages:
    root = tmp_path_factory.mktemp("loop")
    stages = Stages(root)
    log_url = f"sqlite:///{root / 'predictions.db'}"
    stages.resources.update({"prediction_log": PredictionLogSource(url=log_url), "alerts": AlertRoute(),
                             # judge from the first simulated day on, and wait for a missing result as long as the test needs
                             "retrain_policy": RetrainPolicy(lookback_days=7, give_up_hours=24 * 30)})
    config = tiny_run_config(tiny_bert_dir, domain_adapted_model={"enabled": False},
                             task_model={"epochs": 2, "min_test_accuracy": 0.0})
    config["ops"]["exported_model"] = {"config": {"latency_requests": 20, "latency_budget_p99_ms": 1000.0}}  # type: ignore[index]
    assert stages.materialize([*TRANSFER_ASSETS, exported_model, deployment], run_config={**config, **IN_PROCESS}).success

    amazon = load_labelled_text(bundled_source("amazon"))
    days = [sample_day(date.fromisoformat(w), amazon, 220, seed=i, corruption_rate=PLAN[w][0],
                       attributes={"channel": "noisy" if PLAN[w][0] else "web"}) for i, w in enumerate(WINDOWS)]
    app = create_app(ServingConfig(deployment=stages["deployment_target"].path(), log_url=log_url, accept_event_time=True))
    with TestClient(app) as client:
        replay(client, days)  # type: ignore[arg-type]
    for window in WINDOWS:
        assert stages.materialize([feature_drift], partition_key=window, run_config=IN_PROCESS).success
    return stages


def _canary(stages: Stages, window: str) -> None:
    run_config = {**IN_PROCESS, "ops": {"canary_accuracy": {"config": {"slo": PLAN[window][1], "slice_keys": ["channel"]}}}}
    assert stages.materialize([canary_accuracy], partition_key=window, run_config=run_config).success


def _meta(stages: Stages, asset: str, window: str) -> dict[str, Any]:
    found = latest_metadata(stages.instance, asset, window)
    assert found is not None, f"{asset}[{window}] was not materialised"
    return found


def _tick(stages: Stages, cursor: str | None) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    context = dg.build_sensor_context(instance=stages.instance, cursor=cursor, resources={
        "retrain_policy": stages["retrain_policy"], "alerts": stages["alerts"]})
    outcome = drift_canary_trigger(context)
    assert isinstance(outcome, dg.SensorResult | dg.SkipReason)
    return outcome, outcome.cursor if isinstance(outcome, dg.SensorResult) else context.cursor


def test_drift_names_the_features_that_moved_and_the_clean_day_stays_quiet(loop: Stages) -> None:
    clean = _meta(loop, "feature_drift", WINDOWS[0])
    assert clean["drift_status"] == "no_drift" and clean["drifted"] is False, clean["summary"]
    assert clean["rows"] == 220 and clean["model_version"] == "1"
    for window in WINDOWS[1:]:
        shifted = _meta(loop, "feature_drift", window)
        assert shifted["drifted"] is True, shifted["summary"]
        # mangled letters fall outside the tiny vocabulary: more unknown tokens, less confident answers
        assert {"unknown_share", "confidence"} <= set(shifted["drifted_features"]), shifted["drifted_features"]
        assert shifted["scores"]["unknown_share"] > 0.15
    check = loop.check_evaluation("feature_drift", "features_within_drift_thresholds")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN  # a warning: drift alone is no gate


def test_the_sensor_waits_for_a_missing_canary_then_retrains_only_on_drift_and_breach(loop: Stages) -> None:
    _canary(loop, WINDOWS[0])
    _canary(loop, WINDOWS[1])
    waiting, cursor = _tick(loop, None)
    assert isinstance(waiting, dg.SkipReason)
    assert f"window {WINDOWS[2]}: waiting for canary_accuracy" in (waiting.skip_message or "")
    assert f"window {WINDOWS[1]}: alert" in (waiting.skip_message or "")

    for window in WINDOWS[2:]:
        _canary(loop, window)
    assert _meta(loop, "canary_accuracy", WINDOWS[1])["canary_status"] == "holds"
    breach = _meta(loop, "canary_accuracy", WINDOWS[2])
    assert breach["canary_status"] == "breach" and breach["n_labelled"] == 220
    assert "channel=noisy" in breach["slices"]

    requested, cursor = _tick(loop, cursor)
    assert isinstance(requested, dg.SensorResult)
    runs = requested.run_requests or []
    assert [(r.run_key, r.partition_key) for r in runs] == [(f"retrain-{WINDOWS[2]}", WINDOWS[2])]
    assert runs[0].tags["tlp/trigger_window"] == WINDOWS[2]
    assert "breach" in runs[0].tags["tlp/canary_summary"] or "below" in runs[0].tags["tlp/canary_summary"]
    state = json.loads(cursor or "{}")
    assert state["last_judged_window"] == WINDOWS[3]  # the next window fell in the cooldown: alerted, not retrained

    again, _ = _tick(loop, cursor)  # nothing new: the days after the traffic have no results yet
    assert isinstance(again, dg.SkipReason), again
    assert (again.skip_message or "").startswith(f"window {(FIRST + timedelta(days=4)).isoformat()}: waiting for feature_drift")


def test_a_retrain_that_cannot_beat_the_live_model_registers_nothing(loop: Stages) -> None:
    _canary(loop, WINDOWS[2])
    before = registered_versions(loop["mlflow"].settings(), "tlp-classifier")
    run_config = {**IN_PROCESS, "ops": {
        "retrained_model": {"config": {"epochs": 1, "min_fresh_rows": 60, "min_fresh_gain_points": 100.0}},
        "candidate_model": {"config": {"latency_requests": 20, "latency_budget_p99_ms": 1000.0}},
    }}
    result = loop.materialize([retrained_model, candidate_model], partition_key=WINDOWS[2], run_config=run_config,
                              tags={"tlp/trigger_window": WINDOWS[2]}, raise_on_error=False)
    assert not result.success
    gate = loop.check_evaluation("retrained_model", "beats_live_model_on_fresh_data")
    assert not gate.passed and "must exceed +100.0" in (gate.description or "")
    assert latest_metadata(loop.instance, "retrained_model", WINDOWS[2]) is None
    assert registered_versions(loop["mlflow"].settings(), "tlp-classifier") == before
