"""The one place that picks the environment: TLP_ENV=local (the embedded default) or TLP_ENV=production."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from resources.artifact_store import ArtifactStore
from resources.deployment_target import DeploymentTarget
from resources.mlflow_tracking import MlflowTracking
from tl_platform.local_state import default_tracking_uri, tlp_home

ENVIRONMENTS = ("local", "production")


def local_resources(home: Path) -> dict[str, dg.ConfigurableResource]:
    """SQLite-backed MLflow and a local artifact tree, all under ``home``; a tracking URI in the environment wins."""
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(home)
    return {
        "artifact_store": ArtifactStore(root=str(home / "artifacts")),
        "deployment_target": DeploymentTarget(record_path=str(home / "deployment.json")),
        "mlflow": MlflowTracking(
            tracking_uri=tracking_uri,
            artifact_location=(home / "mlartifacts").as_uri(),
            ui_base_url=os.environ.get("TLP_MLFLOW_UI", "http://127.0.0.1:5000"),
        ),
    }


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Services named by environment variables (see docker-compose.yml); a missing one fails at load time."""
    return {
        "artifact_store": ArtifactStore(root=dg.EnvVar("TLP_ARTIFACT_ROOT")),
        "deployment_target": DeploymentTarget(record_path=dg.EnvVar("TLP_DEPLOYMENT_RECORD")),
        "mlflow": MlflowTracking(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
            ui_base_url=dg.EnvVar("TLP_MLFLOW_UI"),
        ),
    }


def resources_for_environment(name: str | None = None) -> dict[str, dg.ConfigurableResource]:
    env = name or os.environ.get("TLP_ENV", "local")
    if env == "local":
        return local_resources(tlp_home())
    if env == "production":
        return production_resources()
    raise ValueError(f"TLP_ENV={env!r} is not an environment; use one of {ENVIRONMENTS}")
