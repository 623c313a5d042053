from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from resources import DeploymentTarget, MlflowTracking, StageStore


class Stages:
    """The resources of the embedded default on a temporary tree, and one Dagster instance for every run.

    Runs find their upstream outputs through the instance's catalogue, so consecutive materialisations of
    one test must share it (``dg.materialize`` alone would give each call an empty instance).
    """

    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance | None = None) -> None:
        self.root = tmp_path
        self.instance = instance or dg.DagsterInstance.ephemeral()
        self.resources: dict[str, Any] = {
            "stage_store": StageStore(root=str(tmp_path / "artifacts"), cache_dir=str(tmp_path / "cache")),
            "deployment_target": DeploymentTarget(record_path=str(tmp_path / "deployment.json")),
            "mlflow": MlflowTracking(
                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                experiment_name="tests",
                artifact_location=(tmp_path / "mlartifacts").as_uri(),
                ui_base_url="http://mlflow.test",
            ),
        }

    def __getitem__(self, name: str) -> Any:
        return self.resources[name]

    def materialize(
        self, assets: Sequence[Any], run_config: dict[str, Any] | None = None, **kwargs: Any
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(assets, resources=self.resources, instance=self.instance, run_config=run_config, **kwargs)


    def check_evaluation(self, asset: str, check: str) -> dg.AssetCheckEvaluation:
        """The newest evaluation of a check, as the catalogue holds it (a failed gate's too, which fails its step)."""
        history = self.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1
        )
        assert history, f"{asset}:{check} was never evaluated"
        event = history[0].event
        assert event is not None and event.dagster_event is not None
        evaluation = event.dagster_event.event_specific_data
        assert isinstance(evaluation, dg.AssetCheckEvaluation)
        return evaluation

    def latest_run_of(self, asset: str) -> str | None:
        """The run of the asset's newest materialisation in the catalogue, or None when it has none."""
        event = self.instance.get_latest_materialization_event(dg.AssetKey(asset))
        return event.run_id if event is not None else None


def make_stage_resources(tmp_path: Path) -> Stages:
    """A temporary artifact tree and a temporary SQLite MLflow store, as the embedded default uses."""
    return Stages(tmp_path)


def tiny_run_config(tiny_bert_dir: Path, **overrides: dict[str, object]) -> dict[str, object]:
    """Run config of the three model stages on the tiny BERT, short enough for a unit-test budget."""
    ops: dict[str, dict[str, object]] = {
        "foundation_model": {"config": {"source": str(tiny_bert_dir)}},
        "domain_adapted_model": {"config": {"epochs": 2, "head_warmup_epochs": 1, "learning_rate": 5e-4}},
        "task_model": {"config": {"method": "full", "epochs": 3, "learning_rate": 2e-3, "min_test_accuracy": 0.55}},
    }
    for op, config in overrides.items():
        ops.setdefault(op, {"config": {}})["config"].update(config)  # type: ignore[union-attr]
    return {"ops": ops}
