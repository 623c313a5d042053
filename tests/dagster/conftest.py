from __future__ import annotations

from pathlib import Path

from resources import ArtifactStore, DeploymentTarget, MlflowTracking


def make_stage_resources(tmp_path: Path) -> dict[str, object]:
    """A temporary artifact tree and a temporary SQLite MLflow store, as the embedded default uses."""
    return {
        "artifact_store": ArtifactStore(root=str(tmp_path / "artifacts")),
        "deployment_target": DeploymentTarget(record_path=str(tmp_path / "deployment.json")),
        "mlflow": MlflowTracking(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment_name="tests",
            artifact_location=(tmp_path / "mlartifacts").as_uri(),
            ui_base_url="http://mlflow.test",
        ),
    }


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
