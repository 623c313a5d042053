"""The closed loop on real data: MiniLM trained on amazon reviews, served over HTTP, shifted benignly then harmfully.

Measured first (bench/domain_shift.py): the amazon model stays above the 0.85 SLO on yelp and on imdb
sentences, so no bundled pair shifts harmfully. The benign shift here is yelp (drift, canary holds); the
harmful one is constructed, and says so: imdb sentences with their evaluative words in slang ("great" ->
"fire", "bad" -> "meh", ``shifts.slang``), on which the amazon model scored 0.706 on held-out rows
(bench/retrain_recovery.py). The shift is systematic, so the feedback can teach it. Days are simulated in the
past through the server's event-time header; monitor partitions are materialised per day and the trigger
sensor is evaluated with the daemon's code, then the retrain it requests is run.

Then the A/B loop on the same models: the candidate challenges the champion on two days of slang reviews from
600 users and ships; the old model then challenges the new champion on slang and standard reviews and is
rolled back, with the slang slice named as the reason.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from assets import (
    ab_decision,
    ab_experiment,
    canary_accuracy,
    candidate_model,
    deployment,
    domain_adapted_model,
    exported_model,
    feature_drift,
    foundation_model,
    labelled_data,
    retrained_model,
    task_model,
)
from resources import AlertRoute, PredictionLogSource, RetrainPolicy
from sensors.retrain_trigger import drift_canary_trigger, latest_metadata
from tests.dagster.conftest import Stages
from tests.server_process import free_port, start_server
from tl_platform.data import SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.data.schema import LabelledDataset
from tl_platform.serving.deployment import read_deployment_record
from tl_platform.simulation.shifts import slang
from tl_platform.simulation.traffic import TrafficDay, replay, sample_day
from tl_platform.tracking.mlflow_tracker import registered_versions_with_aliases

pytestmark = pytest.mark.integration
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
MAIN_CONFIG = {
    "ops": {
        "domain_adapted_model": {"config": {"enabled": False}},
        "task_model": {"config": {"epochs": 5, "seed": 42}},
        # The export gates are tested on their own (tests/unit/test_export.py, the demo); here a 5-epoch model on a
        # shared CI machine would fail them for reasons this loop is not about: the INT8 agreement (dynamic
        # quantisation flips borderline texts, the serving-hardening issue) and a noisy p99.
        "exported_model": {"config": {"latency_requests": 50, "latency_budget_p99_ms": 500.0,
                                      "min_int8_agreement": 0.97, "max_int8_accuracy_drop_points": 2.0}},
    }
}
# 600 users, each on one model for the experiment: about 300 per arm, past the planned sample (an MDE of 0.15
# from 0.8 needs 70 per arm). The retrain's gain on held-out slang varied from run to run (about +4 to +14
# points), so the experiment sees 2,000 slang requests a day: a +4-point gain is then about 2.8 standard errors.
AB_UNITS = 600
HARMFUL_REQUESTS = 450  # measured enough for the retrain to recover (bench/retrain_recovery.py)


class WebhookInbox:
    """A local on-call webhook that keeps what it receives."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def inbox() -> Iterator[WebhookInbox]:
    hook = WebhookInbox()
    yield hook
    hook.server.shutdown()


def _domain(name: str) -> LabelledDataset:
    return load_labelled_text(bundled_source(name))


def _evaluate_sensor(stages: Stages, cursor: str | None) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    context = dg.build_sensor_context(
        instance=stages.instance, cursor=cursor,
        resources={"retrain_policy": stages["retrain_policy"], "alerts": stages["alerts"]},
    )
    outcome = drift_canary_trigger(context)
    assert isinstance(outcome, dg.SensorResult | dg.SkipReason)
    cursor_after = outcome.cursor if isinstance(outcome, dg.SensorResult) else context.cursor
    return outcome, cursor_after


@pytest.mark.timeout(2400)  # two MiniLM trainings; about 12 minutes on 2 quiet cores, twice that when shared
def test_benign_shift_alerts_harmful_shift_retrains_and_the_candidate_ships_through_an_ab_test(
    tmp_path: Path, inbox: WebhookInbox
) -> None:
    stages = Stages(tmp_path)
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    stages.resources.update({
        "prediction_log": PredictionLogSource(url=log_url),
        "alerts": AlertRoute(webhook_url=inbox.url),
        "retrain_policy": RetrainPolicy(),
    })
    main = [labelled_data, foundation_model, domain_adapted_model, task_model, exported_model, deployment]
    assert stages.materialize(main, run_config={**IN_PROCESS, **MAIN_CONFIG}).success

    port = free_port()
    server = start_server(stages["deployment_target"].path(), log_url, port, tmp_path, "--accept-event-time")
    try:
        first = date.today() - timedelta(days=10)
        yelp = _domain("yelp")
        imdb_rows = stratified_split(_domain("imdb"), SplitFractions(0.5, 0.25, 0.25), seed=3)
        days = [
            sample_day(first, yelp, 200, seed=1, attributes={"domain": "yelp"}),
            sample_day(first + timedelta(days=1), yelp, 200, seed=2, attributes={"domain": "yelp"}),
            # the harmful shift: another domain written in slang, each sentence sent once
            sample_day(first + timedelta(days=2), imdb_rows.train, HARMFUL_REQUESTS, seed=3, shift=slang,
                       attributes={"domain": "imdb", "register": "slang"}),
            sample_day(first + timedelta(days=3), imdb_rows.test, 200, seed=4, shift=slang,
                       attributes={"domain": "imdb", "register": "slang"}),
        ]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            outcomes = replay(client, days)
    finally:
        server.terminate()
        server.wait(30)
    assert [o.requests for o in outcomes] == [200, 200, HARMFUL_REQUESTS, 200]
    windows = [day.day.isoformat() for day in days]

    for window in windows:
        assert stages.materialize([feature_drift], partition_key=window, run_config=IN_PROCESS).success
        assert stages.materialize([canary_accuracy], partition_key=window, run_config=IN_PROCESS).success
    drift = {w: _metadata(stages, "feature_drift", w) for w in windows}
    canary = {w: _metadata(stages, "canary_accuracy", w) for w in windows}
    # benign: the traffic moved (the embedding above all), and the model still meets its SLO
    for window in windows[:2]:
        assert drift[window]["drifted"] is True, drift[window]["summary"]
        assert canary[window]["canary_status"] == "holds", canary[window]["summary"]
    # harmful: moved, and the accuracy is confidently below the SLO
    for window in windows[2:]:
        assert drift[window]["drifted"] is True, drift[window]["summary"]
        assert canary[window]["canary_status"] == "breach", canary[window]["summary"]
        assert canary[window]["ci_high"] < 0.85

    outcome, cursor = _evaluate_sensor(stages, cursor=None)
    assert isinstance(outcome, dg.SensorResult), outcome
    assert [request.partition_key for request in outcome.run_requests or []] == [windows[2]]
    request = (outcome.run_requests or [])[0]
    assert request.run_key == f"retrain-{windows[2]}"
    alerted = {json.dumps(body, sort_keys=True) for body in inbox.received}
    assert any(windows[0] in body and "drift" in body for body in alerted), inbox.received
    assert any(windows[3] in body and "cooldown" in body for body in alerted), inbox.received
    # a second tick finds nothing new to judge and repeats no request
    again, _ = _evaluate_sensor(stages, cursor)
    assert isinstance(again, dg.SkipReason), again

    retrain = stages.materialize(
        [retrained_model, candidate_model], partition_key=windows[2], tags=dict(request.tags),
        # One of the 198 old test sentences is half a point: measured with the noisy-channel shift, the retrain
        # lost 0 to 2 of them from run to run, so the default 1-point guard would make this test a coin toss;
        # 2 points still fails the forgetting measured at the recipe's rate (1.5 to 3.5, bench/retrain_recovery.py).
        # Fresh data from the window's day alone (the slang traffic), as bench/retrain_recovery.py measured it:
        # with the benign days' yelp rows mixed in, a retrain gained under 2 points on held-out slang.
        run_config={**IN_PROCESS, "ops": {"retrained_model": {"config": {"max_forgetting_points": 2.0, "fresh_days": 1}},
                                          "candidate_model": MAIN_CONFIG["ops"]["exported_model"]}},
    )
    assert retrain.success
    forgetting = _metadata(stages, "retrained_model", windows[2])["forgetting"]
    assert forgetting["fresh_gain_points"] > 0, forgetting
    assert forgetting["previous_change_points"] >= -2.0, forgetting
    assert stages.check_evaluation("retrained_model", "no_forgetting_on_previous_test_set").passed

    versions = {version: (aliases, tags) for version, aliases, tags in
                registered_versions_with_aliases(stages["mlflow"].settings(), "tlp-classifier")}
    candidate = str(_metadata(stages, "candidate_model", windows[2])["registered_version"])
    aliases, tags = versions[candidate]
    assert aliases == []  # a candidate moves no alias: the A/B experiment decides
    assert tags["tlp.status"] == "candidate"
    assert tags["tlp.trigger_window"] == windows[2]
    assert tags["tlp.parent_version"] == "1"
    assert "breach" in tags["tlp.canary_summary"] or "below" in tags["tlp.canary_summary"]

    # The candidate against the champion, over HTTP, on the population that shifted: reviews in slang.
    held_out = LabelledDataset(
        texts=imdb_rows.validation.texts + imdb_rows.test.texts, labels=imdb_rows.validation.labels + imdb_rows.test.labels,
        schema=imdb_rows.test.schema, source="imdb held out", rows_read=0, duplicates=imdb_rows.test.duplicates)
    amazon = _domain("amazon")
    start = first + timedelta(days=5)
    ab_days = [
        replace(sample_day(start + timedelta(days=offset), held_out, 2000, seed=10 + offset, shift=slang,
                           attributes={"domain": "imdb", "register": "slang"}), units=AB_UNITS)
        for offset in range(2)
    ]
    shipped = _experiment(stages, tmp_path, log_url, start, ab_days, candidate_version="")
    assert shipped["verdict"] == "ship", shipped["summary"]
    assert _registry(stages)[candidate][0] == ["champion"]
    holdout = read_deployment_record(stages["deployment_target"].path())
    assert holdout.champion.version == candidate and holdout.challenger is not None and holdout.challenger.version == "1"

    # The old model challenges again: no better on standard reviews, much worse on slang, the critical slice.
    again = first + timedelta(days=8)
    rechallenge = [
        replace(day, units=AB_UNITS) for offset in range(2) for day in (
            sample_day(again + timedelta(days=offset), held_out, 2000, seed=30 + offset, shift=slang,
                       attributes={"domain": "imdb", "register": "slang"}),
            sample_day(again + timedelta(days=offset), amazon, 300, seed=40 + offset,
                       attributes={"domain": "amazon", "register": "standard"}),
        )
    ]
    rolled_back = _experiment(stages, tmp_path, log_url, again, rechallenge, candidate_version="1")
    assert rolled_back["verdict"] == "roll_back", rolled_back["summary"]
    assert any("register=slang" in reason for reason in rolled_back["reasons"]), rolled_back["reasons"]
    registry = _registry(stages)
    assert registry[candidate][0] == ["champion"] and registry["1"][1]["tlp.status"] == "retired"


def _experiment(stages: Stages, tmp_path: Path, log_url: str, start: date, days: list[TrafficDay],
                candidate_version: str) -> dict[str, Any]:
    """Start an experiment on ``start``, replay its days through a fresh server, decide each day; the last decision."""
    config = {"candidate_version": candidate_version, "experiment_id": f"e2e-{start.isoformat()}",
              "start_day": start.isoformat(), "baseline": 0.8, "mde": 0.15, "min_duration_days": 2,
              "slices": ["register"], "guardrails": [
                  {"name": "p99_latency", "metric": "p99_latency_ms", "limit": 500.0, "direction": "lower",
                   "comparison": "vs_champion"},
                  {"name": "slang_accuracy", "metric": "accuracy", "limit": -0.02, "direction": "higher",
                   "comparison": "vs_champion", "slice": {"register": "slang"}}]}
    assert stages.materialize([ab_experiment], run_config={**IN_PROCESS, "ops": {"ab_experiment": {"config": config}}}).success
    port = free_port()
    server = start_server(stages["deployment_target"].path(), log_url, port, tmp_path, "--accept-event-time")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            replay(client, days, seed=start.toordinal())
    finally:
        server.terminate()
        server.wait(30)
    decided: dict[str, Any] = {}
    for day in sorted({d.day for d in days}):
        assert stages.materialize([ab_decision], partition_key=day.isoformat(), run_config=IN_PROCESS).success
        decided = _metadata(stages, "ab_decision", day.isoformat())
        if decided["verdict"] != "keep_running":
            break
    return decided


def _registry(stages: Stages) -> dict[str, tuple[list[str], dict[str, str]]]:
    return {version: (sorted(aliases), tags) for version, aliases, tags in
            registered_versions_with_aliases(stages["mlflow"].settings(), "tlp-classifier")}


def _metadata(stages: Stages, asset: str, partition: str) -> dict[str, Any]:
    found = latest_metadata(stages.instance, asset, partition)
    assert found is not None, f"{asset}[{partition}] not materialised"
    return found
