"""The MLflow adapter against a real local SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_platform.data.bundled import SENTIMENT_SCHEMA
from tl_platform.data.schema import DuplicateReport, LabelledDataset
from tl_platform.tracking.mlflow_tracker import (
    MlflowSettings,
    metric_history,
    registered_versions,
    search_runs,
    start_tracked_run,
)
from tl_platform.tracking.protocol import RunTracker


@pytest.fixture()
def settings(tmp_path: Path) -> MlflowSettings:
    return MlflowSettings(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment_name="unit",
        artifact_location=(tmp_path / "artifacts").as_uri(),
        ui_base_url="http://ui.test",
    )


def test_a_run_records_params_metrics_inputs_artifacts_and_a_version(settings: MlflowSettings, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    dataset = LabelledDataset(("good", "bad"), (1, 0), SENTIMENT_SCHEMA, "mem", 2, DuplicateReport(0, 0, 0))
    with start_tracked_run(settings, "unit-run", {"dagster.run_id": "r1"}) as tracker:
        assert isinstance(tracker, RunTracker)
        tracker.log_params({"method": "lora", "long": "x" * 10000})
        tracker.log_metrics({"eval_loss": 0.5, "nan_dropped": float("nan")}, step=1)
        tracker.log_metrics({"eval_loss": 0.4}, step=2)
        tracker.log_dataset(dataset, name="train", context="train", digest=dataset.content_hash())
        version = tracker.log_bundle(bundle, "bundle", "tlp-unit", {"bundle_sha256": "abc"})
        run_id = tracker.run_id
        assert tracker.ui_url is not None and tracker.ui_url.startswith("http://ui.test/#/experiments/")
    (run,) = search_runs(settings)
    assert run["run_id"] == run_id and run["status"] == "FINISHED"
    assert run["params"]["method"] == "lora"  # type: ignore[index]
    assert len(run["params"]["long"]) == 6000  # type: ignore[index]
    assert run["tags"]["dagster.run_id"] == "r1"  # type: ignore[index]
    assert "nan_dropped" not in run["metrics"]  # type: ignore[operator]
    assert metric_history(settings, run_id, "eval_loss") == [(1, 0.5), (2, 0.4)]
    assert version.version == "1" and version.source == f"runs:/{run_id}/bundle"
    assert [v.version for v in registered_versions(settings, "tlp-unit")] == ["1"]


def test_a_failing_body_marks_the_run_failed(settings: MlflowSettings) -> None:
    with pytest.raises(RuntimeError, match="boom"), start_tracked_run(settings, "failing", {}):
        raise RuntimeError("boom")
    (run,) = search_runs(settings)
    assert run["status"] == "FAILED"
