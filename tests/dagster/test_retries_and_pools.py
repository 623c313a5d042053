"""Transient tracking failures are retried, others are not; training stages share a pool of one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import requests

from assets import labelled_data
from assets.foundation import foundation_model
from resources import MlflowTracking
from tests.dagster.conftest import make_stage_resources
from tl_platform.orchestration import LOCAL_INSTANCE_YAML
from tl_platform.tracking.mlflow_tracker import is_tracking_unavailable


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (requests.exceptions.ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/experiments"), True),
        (mlflow.exceptions.MlflowException("API request to http://h/api failed with exception Max retries exceeded"), True),
        (mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked"), True),
        (mlflow.exceptions.MlflowException("Invalid value for parameter 'name'"), False),
        (ValueError("FineTuneConfig.method must be 'lora' or 'full'"), False),
        (RuntimeError("wrapped"), False),
    ],
)
def test_what_counts_as_the_tracking_store_being_unavailable(error: BaseException, transient: bool) -> None:
    assert is_tracking_unavailable(error) is transient


def test_an_error_caused_by_a_refused_connection_is_transient() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as cause:
            raise RuntimeError("tracking call failed") from cause
    except RuntimeError as err:
        assert is_tracking_unavailable(err)


def test_an_unreachable_tracking_server_is_retried_then_fails(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take minutes here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    stages = make_stage_resources(tmp_path)
    stages.resources["mlflow"] = MlflowTracking(
        tracking_uri="http://127.0.0.1:9", experiment_name="tests", unavailable_retries=2, unavailable_wait_s=0.0
    )
    config = {"ops": {"foundation_model": {"config": {"source": str(tiny_bert_dir)}}}}
    result = stages.materialize([labelled_data, foundation_model], run_config=config, raise_on_error=False)
    assert not result.success
    retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert [e.step_key for e in retries] == ["foundation_model", "foundation_model"]
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "foundation_model"
    assert "the MLflow tracking store at http://127.0.0.1:9 could not be reached" in str(failure.event_specific_data.error)  # type: ignore[union-attr]


def test_a_bad_config_is_not_retried(tiny_bert_dir: Path, tmp_path: Path) -> None:
    stages = make_stage_resources(tmp_path)
    config = {"ops": {"foundation_model": {"config": {"source": str(tmp_path / "no-such-model")}}}}
    result = stages.materialize([labelled_data, foundation_model], run_config=config, raise_on_error=False)
    assert not result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def test_the_local_instance_limits_every_pool_to_one(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_a_run_waits_for_the_pooled_stage_another_run_holds(tmp_path: Path) -> None:
    """Two processes each materialise a step of the `training` pool; the second queues until the first is done.

    The second starts once the first holds the slot. Started at the same instant on SQLite, both can take the
    pool's one slot: SQLite has no row locks, so Dagster's claim is a read then a write (Postgres, the production
    storage, locks the row). The README says so beside the local instance.
    """
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML)
    with dg.DagsterInstance.from_config(str(home)):  # create the storage before two processes race to
        pass
    spans, started = tmp_path / "spans.txt", tmp_path / "started"
    env = {**os.environ, "DAGSTER_HOME": str(home), "POOL_TEST_SPANS": str(spans), "POOL_TEST_STARTED": str(started),
           "LINEAGE_TEST_ROOT": str(tmp_path / "store"), "LINEAGE_TEST_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "tests.dagster.lineage_defs",
               "--select", "pooled_step"]
    repo = Path(__file__).resolve().parents[2]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start()
    deadline = time.monotonic() + 120
    while not started.exists():
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the first run never reached its pooled step"
        time.sleep(0.1)
    second = start()
    for process in (first, second):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    (_, first_end, first_saw_peer), (second_start, _, _) = sorted(
        tuple(float(x) for x in line.split()) for line in spans.read_text().splitlines()
    )
    assert first_saw_peer == 1  # the second run was queued for the slot while the first held it
    assert second_start >= first_end  # and ran only after it was given back


def test_the_production_instance_limits_pools_and_queues_runs(tmp_path: Path) -> None:
    """deploy/dagster.yaml without its Postgres storage (no database here): the concurrency settings load."""
    import yaml

    settings = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml").read_text())
    settings.pop("storage")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(settings))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config is not None and concurrency.run_queue_config.max_concurrent_runs == 2
