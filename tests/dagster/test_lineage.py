"""Every run reads the upstream version its lineage names: concurrent runs, re-execution, partitions, gates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from resources.catalogue import locate
from tests.dagster import lineage_defs
from tests.dagster.lineage_defs import daily_summary, daily_text, shouted_text, source_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LINEAGE_TEST_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("LINEAGE_TEST_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def instance(store_env: Path) -> Iterator[dg.DagsterInstance]:
    (store_env / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(store_env / "dagster_home")) as test_instance:
        yield test_instance


IN_PROCESS = {"execution": {"config": {"in_process": {}}}}  # steps in the run's process: no re-import per step


def source_config(text: str, **extra: object) -> dict[str, object]:
    return {"ops": {"source_text": {"config": {"text": text, **extra}}}}


def materialised(instance: dg.DagsterInstance, run_id: str, asset: str) -> dict[str, object]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        found = record.asset_materialization
        if found is not None and found.asset_key == dg.AssetKey(asset):
            return {key: value.value for key, value in found.metadata.items()}
    raise AssertionError(f"run {run_id} materialised no {asset}")


def test_two_concurrent_runs_each_read_their_own_upstream(store_env: Path) -> None:
    """Two `dagster asset materialize` processes at once; both sources are written before either reads."""
    home = store_env / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)):  # create the instance's storage before two processes race to
        pass
    processes = []
    for text in ("alpha", "beta"):
        config = store_env / f"{text}.json"
        # one process per run (steps in process): the two runs overlap as two deployments' runs would
        run_config = {**source_config(text, barrier_dir=str(store_env / "barrier")), **IN_PROCESS}
        config.write_text(json.dumps(run_config))
        command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "tests.dagster.lineage_defs",
                   "--select", "source_text,shouted_text", "-c", str(config)]
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey("shouted_text"), limit=10).records
        assert len(records) == 2
        for record in records:
            assert record.asset_materialization is not None
            meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            own_source = materialised(instance, record.run_id, "source_text")
            assert meta["read"] == own_source["text"]  # never the other run's source
            upstream = meta["upstream_versions"]["source_text"]  # type: ignore[index]
            assert (upstream["run_id"], upstream["how"]) == (record.run_id, "this run")
        assert {r.asset_materialization.metadata["read"].value for r in records} == {"alpha", "beta"}  # type: ignore[union-attr]
        # the storage id each recorded names one materialisation across the instance (SQLite numbers each
        # run's own log separately), so commands outside a run find exactly the source the newest one read
        newest = records[0]
        located = locate(instance, lineage_defs.defs.resources["stage_store"], ["shouted_text:source_text"])
        source = materialised(instance, newest.run_id, "source_text")
        assert located["shouted_text:source_text"] == str(source["stage_output"])


def test_re_executing_one_step_of_an_old_run_reads_that_runs_upstream(instance: dg.DagsterInstance) -> None:
    job = dg.reconstructable(lineage_defs.texts_job)
    old = dg.execute_job(job, instance, run_config={**source_config("old"), **IN_PROCESS})
    new = dg.execute_job(job, instance, run_config={**source_config("new"), **IN_PROCESS})
    assert old.success and new.success
    again = dg.execute_job(
        job, instance, reexecution_options=dg.ReexecutionOptions(parent_run_id=old.run_id, step_selection=["shouted_text"])
    )
    assert again.success
    meta = materialised(instance, again.run_id, "shouted_text")
    assert meta["read"] == "old"
    upstream = meta["upstream_versions"]["source_text"]  # type: ignore[index]
    assert upstream["run_id"] == old.run_id and upstream["how"] == f"parent run {old.run_id}"
    # a fresh run of the downstream asset alone reads the newest upstream, and says so
    alone = dg.materialize([shouted_text], instance=instance, resources=lineage_defs.defs.resources, selection=[shouted_text])
    alone_meta = materialised(instance, alone.run_id, "shouted_text")
    assert alone_meta["read"] == "new"
    assert alone_meta["upstream_versions"]["source_text"]["how"] == "latest materialisation"  # type: ignore[index]


def test_a_partitioned_backfill_reads_each_partitions_own_upstream(instance: dg.DagsterInstance, store_env: Path) -> None:
    resources = lineage_defs.defs.resources
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    for day in days:  # every upstream partition first: a "latest" pointer would hand all of them 11-03
        dg.materialize([daily_text], instance=instance, resources=resources, partition_key=day)
    for day in reversed(days):
        result = dg.materialize(
            [daily_text, daily_summary], instance=instance, resources=resources, partition_key=day, selection=[daily_summary]
        )
        meta = materialised(instance, result.run_id, "daily_summary")
        assert meta["read"] == f"hello on {day}"
        assert meta["upstream_versions"]["daily_text"]["partition"] == day  # type: ignore[index]
        assert f"/daily_summary/{day}/{result.run_id}" in str(meta["stage_output"])


def test_a_failed_gate_leaves_nothing_downstream_could_read(instance: dg.DagsterInstance) -> None:
    resources = lineage_defs.defs.resources
    good = dg.materialize([source_text], instance=instance, resources=resources, run_config=source_config("good"))
    bad = dg.materialize(
        [source_text, shouted_text], instance=instance, resources=resources,
        run_config=source_config("bad", gate_passes=False), raise_on_error=False,
    )
    assert not bad.success
    failure = bad.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None and "source_text failed its gate (text_accepted: text 'bad')" in str(failure.description)
    assert "downstream keeps reading the last version that passed" in str(failure.description)
    # the catalogue holds no materialisation from the failed run, and the check evaluation names no target
    latest = instance.get_latest_materialization_event(dg.AssetKey("source_text"))
    assert latest is not None and latest.run_id == good.run_id
    (check,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("source_text"), "text_accepted"), limit=1
    )
    evaluation = check.event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert check.run_id == bad.run_id and evaluation.passed is False and evaluation.target_materialization_data is None
    # the downstream step of the failed run never ran; a later one reads the version that passed, and says so
    assert "shouted_text" not in {e.asset_key.to_user_string() for e in (m.materialization for m in bad.get_asset_materialization_events())}
    after = dg.materialize([shouted_text], instance=instance, resources=resources)
    meta = materialised(instance, after.run_id, "shouted_text")
    assert meta["read"] == "good" and meta["upstream_versions"]["source_text"]["run_id"] == good.run_id  # type: ignore[index]


def test_a_stage_without_its_upstream_says_what_to_materialise(instance: dg.DagsterInstance) -> None:
    with pytest.raises(Exception, match=r"source_text has never been materialised; materialise source_text first"):
        dg.materialize([shouted_text], instance=instance, resources=lineage_defs.defs.resources)


def test_a_vanished_output_is_named(instance: dg.DagsterInstance, store_env: Path) -> None:
    import shutil

    resources = lineage_defs.defs.resources
    first = dg.materialize([source_text], instance=instance, resources=resources)
    shutil.rmtree(Path(str(materialised(instance, first.run_id, "source_text")["stage_output"])))
    with pytest.raises(Exception, match=rf"source_text's output .*{first.run_id}.* no longer exists; re-materialise it"):
        dg.materialize([shouted_text], instance=instance, resources=resources)


def test_a_remote_store_uploads_outputs_and_downloads_them_once(store_env: Path, instance: dg.DagsterInstance) -> None:
    """An fsspec URL as the root (memory:// here; s3:// in production): staged, uploaded, then cached locally."""
    import fsspec

    from resources.stage_store import StageStore

    resources = {"stage_store": StageStore(root="memory://tlp-test/stages", cache_dir=str(store_env / "remote_cache"))}
    first = dg.materialize([source_text], instance=instance, resources=resources, run_config=source_config("far away"))
    location = str(materialised(instance, first.run_id, "source_text")["stage_output"])
    assert location == f"memory://tlp-test/stages/source_text/_unpartitioned/{first.run_id}"
    filesystem = fsspec.filesystem("memory")
    assert filesystem.cat(f"/tlp-test/stages/source_text/_unpartitioned/{first.run_id}/text.txt") == b"far away"
    second = dg.materialize([shouted_text], instance=instance, resources=resources)
    assert materialised(instance, second.run_id, "shouted_text")["read"] == "far away"
    copy = store_env / "remote_cache" / "downloads" / "source_text" / "_unpartitioned" / first.run_id
    assert (copy / "text.txt").read_text() == "far away"
    (copy / "text.txt").write_text("cached")  # a second read uses the verified download, not the network
    third = dg.materialize([shouted_text], instance=instance, resources=resources)
    assert materialised(instance, third.run_id, "shouted_text")["read"] == "cached"
