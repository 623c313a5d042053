"""The real server over HTTP: uvicorn in a subprocess on a tiny exported bundle.

Every request answered 200 is in the prediction log even when the server is SIGKILLed mid-traffic (group
commit before the reply), moving the deployment record swaps the model with no failed request, and replicas
starting together on a log the previous release made migrate it once (a --no-migrate replica refuses it).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.server_process import free_port, launch_server, start_server, wait_ready
from tests.serving_fixtures import OLD_PROJECTIONS, ServingBundles, make_old_log, serving_bundles, write_record
from tl_platform.serving.prediction_log import PredictionLog

__all__ = ["serving_bundles"]


@pytest.fixture
def served(serving_bundles: ServingBundles, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, str]]:
    deployment = write_record(tmp_path / "deployment.json", serving_bundles.exported, version="1")
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    port = free_port()
    server = start_server(deployment, log_url, port, tmp_path)
    yield server, f"http://127.0.0.1:{port}", deployment, log_url
    if server.poll() is None:
        server.kill()
        server.wait(10)


def test_every_answered_request_survives_sigkill(served: tuple[subprocess.Popen[bytes], str, Path, str]) -> None:
    server, base, _, log_url = served
    answered: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    response = http.post("/predict", json={"texts": [f"worker {worker} says great phone {i}", "bad"], "unit_id": f"w{worker}"})
                except httpx.TransportError as err:  # expected once the server is killed
                    with lock:
                        failures.append(type(err).__name__)
                    return
                if response.status_code == 200:
                    with lock:
                        answered.append(response.json()["request_id"])

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert server.returncode == -signal.SIGKILL
    assert len(answered) >= 20, f"only {len(answered)} requests answered before the kill"
    log = PredictionLog(log_url)
    logged = {row["request_id"] for row in log.rows("served")}
    missing = [rid for rid in answered if rid not in logged]
    assert missing == [], f"{len(missing)} of {len(answered)} answered requests are not in the log"
    print(f"answered {len(answered)} requests in 1.5 s before SIGKILL; all in the log ({len(logged)} logged)")
    assert all(log.served_row(rid, 1) is not None for rid in answered[:10])  # both texts of a request
    log.engine.dispose()


def test_moving_the_record_swaps_the_model_without_a_failed_request(
    served: tuple[subprocess.Popen[bytes], str, Path, str], serving_bundles: ServingBundles
) -> None:
    server, base, deployment, _ = served
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            while not stop.is_set():
                response = http.post("/predict", json={"text": "the screen is lovely"})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.7)
    write_record(deployment, serving_bundles.exported, version="2")
    deadline = time.monotonic() + 15
    while (not versions or versions[-1] != "2") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    thread.join(15)
    assert len(statuses) > 20 and set(statuses) == {200}
    assert versions[0] == "1" and versions[-1] == "2"
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}  # one clean switch
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["champion_version"] == "2"
    server.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully; depending on the environment it then re-raises the signal (-15) or exits 0
    assert server.wait(20) in (0, -signal.SIGTERM)
    server_log = next(deployment.parent.glob("server-*.log")).read_text()
    assert "Traceback" not in server_log, server_log


def test_replicas_on_an_old_log_migrate_it_once_and_a_no_migrate_replica_waits_for_that(
    serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    deployment = write_record(tmp_path / "deployment.json", serving_bundles.exported, version="1")
    log_url = f"sqlite:///{tmp_path / 'old.db'}"
    make_old_log(log_url, "")  # the previous release's log, with rows
    port = free_port()
    refused = launch_server(deployment, log_url, port, tmp_path, "--no-migrate")
    assert refused.wait(60) == 2
    assert "tlp serve: prediction log schema is at revision unversioned" in (tmp_path / f"server-{port}.log").read_text()
    ports = [free_port(), free_port()]
    servers = [launch_server(deployment, log_url, p, tmp_path) for p in ports]  # two replicas start at once
    try:
        for server, port in zip(servers, ports, strict=True):
            wait_ready(server, port, tmp_path)
        late = free_port()
        servers.append(wait_ready(launch_server(deployment, log_url, late, tmp_path, "--no-migrate"), late, tmp_path))
        answered = [httpx.post(f"http://127.0.0.1:{p}/predict", json={"text": f"sent to {p}"}, timeout=10).json()["request_id"]
                    for p in [*ports, late]]
    finally:
        for server in servers:
            server.kill()
            server.wait(10)
    for port in [*ports, late]:
        server_log = (tmp_path / f"server-{port}.log").read_text()
        assert "Traceback" not in server_log, server_log
    log = PredictionLog(log_url, migrate=False)
    rows = {r["request_id"]: r for r in log.rows()}
    assert [rows[rid]["text"] for rid in answered] == [f"sent to {p}" for p in [*ports, late]]
    assert all(rows[rid]["projection_3"] is not None and rows[rid]["routing_salt"] == "tlp-ab" for rid in answered)
    assert [rows["c" * 32][f"projection_{i}"] for i in range(4)] == OLD_PROJECTIONS["c" * 32]
    with log.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM prediction_log_version")).scalars().all() == ["0004"]
    log.close()
