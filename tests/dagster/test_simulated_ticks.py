"""Ticks the story records for the retrain trigger are the sensor's ticks as the Dagster UI and the daemon see them.

The UI's view is taken through Dagster's GraphQL on the workspace file `tlp ui` serves, and the daemon's through
its own lookup of the runs a sensor already requested. Every workspace of the project names the code location
alike, or the ticks would be stored under a location the UI does not show.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.selector import SensorSelector
from dagster._daemon.sensor import fetch_existing_runs
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from sensors.retrain_trigger import TRIGGER_SENSOR_NAME
from sensors.simulated_ticks import SimulatedTicks
from tl_platform.orchestration import CODE_LOCATION_NAME, local_workspace

ROOT = Path(__file__).resolve().parents[2]
TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 10) {
      status timestamp endTimestamp skipReason runIds runKeys error { message }
    } } }
  }
}
"""


@dg.op
def _noop() -> None:
    return None


@dg.job
def _stand_in_for_the_retrain() -> None:
    _noop()


def test_every_workspace_of_the_project_names_the_code_location_alike(tmp_path: Path) -> None:
    served = local_workspace({"DAGSTER_HOME": str(tmp_path)}, ROOT)
    names = [entry[kind]["location_name"] for path in (ROOT / "workspace.yaml", ROOT / "deploy" / "workspace.yaml", served)
             for entry in yaml.safe_load(path.read_text())["load_from"] for kind in entry]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["code_location_name"]
    assert names == [CODE_LOCATION_NAME] * 3 and pyproject == CODE_LOCATION_NAME


def test_skipped_successful_and_failed_ticks_show_in_the_sensor_history_with_the_run_the_daemon_would_find(
    tmp_path: Path,
) -> None:
    with dg.instance_for_test() as instance:
        ticks = SimulatedTicks(instance, TRIGGER_SENSOR_NAME)
        first = datetime(2026, 3, 10, 0, 1, tzinfo=UTC)
        context = dg.build_sensor_context(instance=instance, cursor=None)

        def skip() -> dg.SkipReason:
            context.update_cursor('{"last_judged_window": "2026-03-08"}')
            return dg.SkipReason("window 2026-03-08: alert: drift without a canary breach")

        skipped = ticks.evaluate(first, context, skip)
        assert skipped.runs == [] and skipped.cursor == '{"last_judged_window": "2026-03-08"}'

        request = dg.RunRequest(run_key="retrain-2026-03-09", partition_key="2026-03-09",
                                tags={"tlp/trigger_window": "2026-03-09"})
        retrain = ticks.evaluate(first + timedelta(days=1), context,
                                 lambda: dg.SensorResult(run_requests=[request], cursor='{"last_retrain": "x"}'))
        (run,) = retrain.runs
        assert run.tags == {"tlp/trigger_window": "2026-03-09", "dagster/sensor_name": TRIGGER_SENSOR_NAME,
                            "dagster/run_key": "retrain-2026-03-09"}
        assert retrain.cursor == '{"last_retrain": "x"}'
        _stand_in_for_the_retrain.execute_in_process(instance=instance, run_id=run.run_id, tags=run.tags)

        def down() -> dg.SkipReason:
            raise RuntimeError("monitor store down")

        with pytest.raises(RuntimeError, match="monitor store down"):
            ticks.evaluate(first + timedelta(days=2), context, down)

        workspace = local_workspace({"DAGSTER_HOME": str(tmp_path)}, ROOT)  # what `tlp ui` serves
        with define_out_of_process_context(str(workspace), None, instance) as ui:
            selector = {"repositoryLocationName": CODE_LOCATION_NAME, "repositoryName": "__repository__",
                        "sensorName": TRIGGER_SENSOR_NAME}
            result = execute_dagster_graphql(ui, TICKS, {"selector": selector})
            assert result.errors is None, result.errors
            shown: list[dict[str, Any]] = result.data["sensorOrError"]["sensorState"]["ticks"]
            sensor = ui.get_sensor(SensorSelector(location_name=CODE_LOCATION_NAME, repository_name="__repository__",
                                                  sensor_name=TRIGGER_SENSOR_NAME))
            assert sensor is not None
            existing = fetch_existing_runs(instance, sensor, [request])

    assert [tick["status"] for tick in shown] == ["FAILURE", "SUCCESS", "SKIPPED"]
    assert [tick["timestamp"] for tick in shown] == [(first + timedelta(days=d)).timestamp() for d in (2, 1, 0)]
    assert all(0 <= tick["endTimestamp"] - tick["timestamp"] < 60 for tick in shown)
    assert "monitor store down" in shown[0]["error"]["message"]
    assert shown[1]["runIds"] == [run.run_id] and shown[1]["runKeys"] == ["retrain-2026-03-09"]
    assert shown[2]["skipReason"] == "window 2026-03-08: alert: drift without a canary breach"
    # a daemon started later on this instance finds the story's retrain under its run key and requests none
    assert {key: found.run_id for key, found in existing.items()} == {"retrain-2026-03-09": run.run_id}


def test_an_evaluation_repeated_after_an_interruption_names_the_run_that_already_retrained() -> None:
    with dg.instance_for_test() as instance:
        ticks = SimulatedTicks(instance, TRIGGER_SENSOR_NAME)
        at = datetime(2026, 3, 11, 0, 1, tzinfo=UTC)
        request = dg.RunRequest(run_key="retrain-2026-03-09", partition_key="2026-03-09")
        context = dg.build_sensor_context(instance=instance, cursor=None)
        first = ticks.evaluate(at, context, lambda: dg.SensorResult(run_requests=[request], cursor="c"))
        again = ticks.evaluate(at, context, lambda: dg.SensorResult(run_requests=[request], cursor="c"),
                               runs_done={"retrain-2026-03-09": first.runs[0].run_id})
        other = ticks.evaluate(at, context, lambda: dg.SensorResult(run_requests=[request], cursor="c"))
        assert again.runs[0].run_id == first.runs[0].run_id != other.runs[0].run_id
        recorded = sorted(run_id for tick in ticks.ticks() for run_id in tick.run_ids)  # same time: any order
        assert recorded == sorted([first.runs[0].run_id, first.runs[0].run_id, other.runs[0].run_id])
