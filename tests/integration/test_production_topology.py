"""The production topology as real processes on Postgres: `mlflow server`, the Dagster gRPC code server,
webserver and daemon, and two serving replicas reading the registry, with the files docker-compose.yml uses.

Runs are launched through the webserver's GraphQL API (Dagster's own GraphQL client) and run by the daemon's
queue; the daemon is killed in the middle of a run and restarted. The trigger sensor is started through the
API and evaluated by the daemon on monitor results written to the instance as monitor runs write them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from dagster_graphql import DagsterGraphQLClient

from assets.exported_model import SERVING_MODEL_NAME
from assets.task_model import ACCURACY_CHECK
from resources.retrain_policy import RetrainPolicy
from sensors.retrain_trigger import RETRAIN_JOB_NAME, complete_windows
from tests.browser import artefact_path, page_text_has, webdriver
from tests.dagster.conftest import tiny_run_config
from tests.integration.topology import COMPOSE_SERVICES, Topology, compose_command, postgres_reason, wait_until
from tests.server_process import ROOT, free_port
from tl_platform.monitoring.trigger import run_key
from tl_platform.serving.record_source import RECORD_TAG

pytestmark = pytest.mark.integration
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
EXPORT = {"config": {"latency_requests": 20, "latency_budget_p99_ms": 1000.0}}


@dataclass
class Deployed:
    topology: Topology
    client: DagsterGraphQLClient
    main_run: str
    queued_while_down: str


def run_status(topology: Topology, run_id: str) -> str:
    data = topology.graphql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})
    return str(data["runOrError"]["status"])  # type: ignore[index]


def wait_for_runs(topology: Topology, run_ids: list[str], timeout_s: float) -> dict[str, str]:
    statuses: dict[str, str] = {}

    def finished() -> bool:
        statuses.update({run_id: run_status(topology, run_id) for run_id in run_ids})
        return all(status in TERMINAL for status in statuses.values())

    wait_until(f"runs {run_ids}", finished, timeout_s, lambda: topology.log("daemon") + topology.log("grpc"))
    return statuses


# what compose sets that the native processes do without, and why
NOT_NATIVE = {
    "MLFLOW_S3_ENDPOINT_URL": "no MinIO natively: MLflow serves artifacts from a local folder",
    "AWS_ACCESS_KEY_ID": "no MinIO natively", "AWS_SECRET_ACCESS_KEY": "no MinIO natively",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "loopback Host headers are allowed by default",
    "TLP_ALERT_WEBHOOK": "no on-call route in a test",
}


def test_the_native_processes_get_every_variable_compose_gives_them(tmp_path: Path) -> None:
    env = Topology(tmp_path).env
    for service in ("mlflow", "user-code", "dagster-webserver", "dagster-daemon", "prediction-log-migrate", "serving"):
        given = set(COMPOSE_SERVICES[service].get("environment") or {})  # type: ignore[arg-type]
        assert given - set(env) - set(NOT_NATIVE) == set(), service
        assert compose_command(service)[0].startswith(str(Path(sys.executable).parent)), service


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Iterator[Deployed]:
    reason = postgres_reason()
    if reason is not None:
        pytest.skip(reason)
    topology = Topology(tmp_path_factory.mktemp("topology"))
    topology.prepare()
    topology.create_databases()
    try:
        topology.start_mlflow()
        topology.start_code_server()
        topology.start_webserver()
        topology.start_daemon()
        client = DagsterGraphQLClient("127.0.0.1", port_number=topology.ports["webserver"])
        config = tiny_run_config(tiny_bert_dir, exported_model=EXPORT["config"])
        main_run = client.submit_job_execution("main_job", run_config={**config, **IN_PROCESS})
        # the daemon dequeues it; kill the daemon while the run works, then queue another while it is down
        wait_until("the main run to start", lambda: run_status(topology, main_run) == "STARTED", 180,
                   lambda: topology.log("daemon"))
        topology.stop("daemon", signal.SIGKILL)
        plan_config = {"ops": {"foundation_model": {"config": {"source": str(tiny_bert_dir)}}}, **IN_PROCESS}
        queued = client.submit_job_execution("plan_job", run_config=plan_config)
        time.sleep(3)
        assert run_status(topology, queued) == "QUEUED"  # nobody dequeues while the daemon is down
        topology.start_daemon()
        statuses = wait_for_runs(topology, [main_run, queued], 900)
        assert statuses == {main_run: "SUCCESS", queued: "SUCCESS"}, (statuses, topology.log("grpc")[-6000:])
        yield Deployed(topology, client, main_run, queued)
    finally:
        topology.stop_all()
        topology.drop_databases()


def test_runs_events_and_mlflow_runs_are_in_postgres(deployed: Deployed) -> None:
    topology = deployed.topology
    runs = dict(topology.query("dagster", "SELECT run_id, status FROM runs"))  # type: ignore[arg-type]
    assert runs[deployed.main_run] == "SUCCESS" and runs[deployed.queued_while_down] == "SUCCESS"
    events = topology.query("dagster", f"SELECT count(*) FROM event_logs WHERE run_id = '{deployed.main_run}' "
                                       "AND dagster_event_type = 'ASSET_MATERIALIZATION'")
    assert events[0][0] >= 6  # labelled data, foundation, domain-adapted, task, exported, deployment
    mlflow_runs = topology.query("mlflow", "SELECT name, status FROM runs")
    assert len(mlflow_runs) >= 4 and all(status == "FINISHED" for _, status in mlflow_runs), mlflow_runs
    versions = topology.query("mlflow", f"SELECT version FROM model_versions WHERE name = '{SERVING_MODEL_NAME}'")
    assert versions == [(1,)]
    tags = dict(topology.query("mlflow", f"SELECT key, value FROM registered_model_tags WHERE name = '{SERVING_MODEL_NAME}'"))  # type: ignore[arg-type]
    assert json.loads(str(tags[RECORD_TAG]))["champion"]["version"] == "1"


def test_two_replicas_serve_from_the_registry_and_log_to_one_postgres_log(deployed: Deployed) -> None:
    topology = deployed.topology
    migrate = subprocess.run(compose_command("prediction-log-migrate"), cwd=ROOT, env=topology.env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        cache = str(topology.root / f"model-cache-{index}")  # one per replica, as one per container
        topology.start(f"serving-{index}", compose_command("serving", port, {"/var/cache/tlp/models": cache}))
    for index, port in enumerate(ports):
        wait_until(f"replica {index}", lambda port=port: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,  # type: ignore[misc]
                   180, lambda index=index: topology.log(f"serving-{index}"))  # type: ignore[misc]
    request_ids: list[str] = []
    for i in range(20):
        port = ports[i % 2]
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": [f"Review number {i}: works well."]},
                              timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
        request_ids.append(response.json()["request_id"])
    logged = {str(row[0]) for row in topology.query("predictions", "SELECT request_id FROM predictions")}
    assert logged == set(request_ids)
    for index in range(2):  # each replica downloaded its own verified copy; nothing shared a path
        cached = list((topology.root / f"model-cache-{index}" / SERVING_MODEL_NAME).iterdir())
        assert [p.name.split("-")[0] for p in cached] == ["v1"]
        topology.stop(f"serving-{index}")


def dismiss_newsletter(session: Any) -> None:
    """The UI's first visit opens a newsletter sign-up over the page; its Skip button closes it."""
    from selenium.webdriver.common.by import By

    for button in session.find_elements(By.TAG_NAME, "button"):
        if button.text.strip() == "Skip":
            session.execute_script("arguments[0].click()", button)
            return


def body_text(session: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(session.find_element(By.TAG_NAME, "body").text)


def drawn(name: str, text: str) -> bool:
    """The graph shows ``name`` whole, or cut in the middle when zoomed out (``domain_adap…_model``)."""
    for line in text.splitlines():
        head, cut, tail = line.partition("…")
        if line == name or (cut and head and tail and name.startswith(head) and name.endswith(tail)):
            return True
    return False


def shot(session: Any, name: str) -> None:
    """A screenshot kept as a test artefact, with the newsletter dialog (it comes back on a new page) closed."""
    dismiss_newsletter(session)
    session.save_screenshot(str(artefact_path(name)))


STAGES = ("labelled_data", "foundation_model", "domain_adapted_model", "task_model", "exported_model", "deployment")


def test_the_dagster_ui_shows_every_stage_its_checks_and_launches_a_materialisation(deployed: Deployed) -> None:
    """In Chromium: the main job's asset graph, a stage's checks, its MLflow link and plots, and a launch."""
    from selenium.webdriver.common.by import By

    topology = deployed.topology
    ui = f"http://127.0.0.1:{topology.ports['webserver']}"
    session = webdriver()
    session.set_window_size(1600, 2400)  # the whole graph of the two groups in view: it renders what is visible
    try:
        session.get(f"{ui}/asset-groups")
        page_text_has(session, ("Global asset lineage", "transfer", "serving"))
        dismiss_newsletter(session)
        # one group opened at a time (the graph draws only what is in view), as a click on its title opens it
        for group, stages in (("transfer", STAGES[:4]), ("serving", STAGES[4:])):
            session.get(f"{ui}/asset-groups?expanded=global%40global%3A{group}")
            wait_until(f"the {group} group's stages in the graph",
                       lambda stages=stages: all(drawn(stage, body_text(session)) for stage in stages),  # type: ignore[misc]
                       90, lambda: body_text(session))
            shot(session, f"dagster-asset-graph-{group}.png")
        for stage, check in (("task_model", ACCURACY_CHECK), ("exported_model", "batch_independent_answers")):
            session.get(f"{ui}/assets/{stage}?view=checks")
            page_text_has(session, (check, "Passed"))
            shot(session, f"dagster-{stage}-checks.png")

        session.get(f"{ui}/assets/task_model")
        page_text_has(session, ("mlflow_run", "confusion_matrix"))
        links = [a.get_attribute("href") or "" for a in session.find_elements(By.TAG_NAME, "a")]
        assert any(link.startswith(topology.env["TLP_MLFLOW_UI"]) for link in links), links
        shot(session, "dagster-task-model.png")
        # a Markdown value opens in a dialog: the plot is an inline PNG there
        opener = next((e for e in session.find_elements(By.XPATH, "//*[contains(text(), 'Markdown')]")), None)
        if opener is not None:
            session.execute_script("arguments[0].click()", opener)
        wait_until("the confusion matrix plot", lambda: any(
            (img.get_attribute("src") or "").startswith("data:image/png")
            for img in session.find_elements(By.TAG_NAME, "img")), 30, lambda: body_text(session))
        shot(session, "dagster-task-model-plot.png")

        # a second export of the same task model, launched from the asset's page: registered version 2
        before = {str(row[0]) for row in topology.query("dagster", "SELECT run_id FROM runs")}
        session.get(f"{ui}/assets/exported_model")
        page_text_has(session, ("Materialize",))
        button = next(b for b in session.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Materialize")
        session.execute_script("arguments[0].click()", button)
        new_runs: list[str] = []

        def launched() -> bool:
            new_runs[:] = [str(row[0]) for row in topology.query("dagster", "SELECT run_id FROM runs")
                           if str(row[0]) not in before]
            return bool(new_runs)

        try:
            wait_until("a run launched from the UI", launched, 60, lambda: session.find_element(By.TAG_NAME, "body").text)
        finally:
            shot(session, "dagster-ui-launch.png")
        assert wait_for_runs(topology, new_runs, 600) == dict.fromkeys(new_runs, "SUCCESS")
        session.get(f"{ui}/runs/{new_runs[0]}")
        page_text_has(session, ("exported_model", "Success"))
        shot(session, "dagster-ui-launched-run.png")
    finally:
        session.quit()
    versions = topology.query("mlflow", f"SELECT version FROM model_versions WHERE name = '{SERVING_MODEL_NAME}' ORDER BY version")
    assert versions == [(1,), (2,)]


def test_the_mlflow_ui_shows_both_versions_and_compares_their_runs(deployed: Deployed) -> None:
    topology = deployed.topology
    rows = topology.query("mlflow", "SELECT v.version, v.run_id, r.experiment_id FROM model_versions v JOIN runs r "
                                    f"ON r.run_uuid = v.run_id WHERE v.name = '{SERVING_MODEL_NAME}' ORDER BY v.version")
    if len(rows) < 2:
        pytest.skip("needs the second version the Dagster UI test launches")
    ui = topology.env["TLP_MLFLOW_UI"]
    session = webdriver()
    try:
        session.get(f"{ui}/#/models/{SERVING_MODEL_NAME}")
        page_text_has(session, ("Version 1", "Version 2"))
        shot(session, "mlflow-registered-versions.png")
        run_ids = json.dumps([str(row[1]) for row in rows])
        experiments = json.dumps(sorted({str(row[2]) for row in rows}))
        session.get(f"{ui}/#/compare-runs?runs={run_ids}&experiments={experiments}")
        metric = str(topology.query("mlflow", f"SELECT key FROM latest_metrics WHERE run_uuid = '{rows[0][1]}' "
                                              "ORDER BY key LIMIT 1")[0][0])
        page_text_has(session, (metric,))
        shot(session, "mlflow-compare-versions.png")
    finally:
        session.quit()


def test_the_daemon_runs_the_trigger_once_per_window_across_a_restart(deployed: Deployed,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Drift and a canary breach in every judged window: one retrain request, not repeated after a restart."""
    topology = deployed.topology
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, topology.env[name])  # this process opens the same instance as the daemon
    policy = RetrainPolicy()
    windows = complete_windows(datetime.now(UTC), timedelta(hours=policy.lateness_hours), policy.lookback_days, None)
    with dg.DagsterInstance.from_config(str(topology.root / "dagster_home")) as instance:
        for window in windows:  # what the daily monitor runs record, written to the same Postgres storage
            instance.report_runless_asset_event(dg.AssetMaterialization(
                "feature_drift", partition=window,
                metadata={"drift_status": "drifted", "drifted": True, "summary": "3 of 8 features drifted"}))
            instance.report_runless_asset_event(dg.AssetMaterialization(
                "canary_accuracy", partition=window,
                metadata={"canary_status": "breach", "complete": True, "accuracy": 0.61, "summary": "0.61 < 0.80"}))
    topology.graphql(
        "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }",
        {"s": {"repositoryLocationName": "tl_platform", "repositoryName": "__repository__",
               "sensorName": "drift_canary_trigger"}},
    )

    def retrain_runs() -> list[tuple[object, ...]]:
        return topology.query("dagster", f"SELECT run_id, status FROM runs WHERE pipeline_name = '{RETRAIN_JOB_NAME}'")

    wait_until("the trigger's retrain request", lambda: len(retrain_runs()) >= 1, 120, lambda: topology.log("daemon"))
    topology.stop("daemon", signal.SIGKILL)
    topology.start_daemon()
    time.sleep(20)  # several ticks of a 5 s sensor after the restart
    runs = retrain_runs()
    assert len(runs) == 1, runs
    keys = topology.query("dagster", f"SELECT value FROM run_tags WHERE key = 'dagster/run_key' AND run_id = '{runs[0][0]}'")
    assert keys == [(run_key(windows[0]),)]  # the oldest judged window retrains; the later ones are in its cooldown
    ticks = topology.graphql(
        "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState { ticks(limit: 50) "
        "{ status runIds } } } } }",
        {"s": {"repositoryLocationName": "tl_platform", "repositoryName": "__repository__",
               "sensorName": "drift_canary_trigger"}},
    )
    ticks_list = ticks["sensorOrError"]["sensorState"]["ticks"]  # type: ignore[index]
    requested = [run_id for tick in ticks_list for run_id in tick["runIds"]]
    # no tick launched another run; a tick the kill interrupted is resumed after the restart and finds the run
    # its key already names, so it may list no run id at all
    assert set(requested) <= {runs[0][0]}, ticks_list
    # and the run it requested, queued across the restart, is launched and ends: not lost in the queue
    wait_for_runs(topology, [str(runs[0][0])], 900)
