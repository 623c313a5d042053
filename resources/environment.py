"""The one place that picks the environment: TLP_ENV=local (the embedded default) or TLP_ENV=production."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from resources.alerts import AlertRoute
from resources.deployment_target import DeploymentTarget
from resources.mlflow_tracking import MlflowTracking
from resources.prediction_log import PredictionLogSource
from resources.retrain_policy import RetrainPolicy
from resources.stage_store import StageStore
from tl_platform.local_state import default_tracking_uri, tlp_home

ENVIRONMENTS = ("local", "production")


def local_resources(home: Path) -> dict[str, dg.ConfigurableResource]:
    """SQLite-backed MLflow and a local artifact tree, all under ``home``; a tracking URI in the environment wins."""
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(home)
    return {
        "stage_store": StageStore(root=str(home / "artifacts"), cache_dir=str(home / "cache")),
        "deployment_target": DeploymentTarget(record_path=str(home / "deployment.json")),
        "mlflow": MlflowTracking(
            tracking_uri=tracking_uri,
            artifact_location=(home / "mlartifacts").as_uri(),
            ui_base_url=os.environ.get("TLP_MLFLOW_UI", "http://127.0.0.1:5000"),
        ),
        # the file `tlp serve` writes by default under the same home
        "prediction_log": PredictionLogSource(url=os.environ.get("TLP_PREDICTION_LOG_URL", f"sqlite:///{home / 'predictions.db'}")),
        "alerts": AlertRoute(webhook_url=os.environ.get("TLP_ALERT_WEBHOOK") or None),
        "retrain_policy": RetrainPolicy(),
    }


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Services named by environment variables (see docker-compose.yml); a missing one fails at load time."""
    return {
        # a shared volume path, or an s3:// URL of an S3-compatible store (s3fs installed, AWS_* credentials)
        "stage_store": StageStore(root=dg.EnvVar("TLP_ARTIFACT_ROOT"), cache_dir=dg.EnvVar("TLP_CACHE_DIR")),
        "deployment_target": DeploymentTarget(record_path=dg.EnvVar("TLP_DEPLOYMENT_RECORD")),
        "mlflow": MlflowTracking(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
            ui_base_url=dg.EnvVar("TLP_MLFLOW_UI"),
        ),
        "prediction_log": PredictionLogSource(url=dg.EnvVar("TLP_PREDICTION_LOG_URL")),
        "alerts": AlertRoute(webhook_url=os.environ.get("TLP_ALERT_WEBHOOK") or None),
        "retrain_policy": RetrainPolicy(),
    }


def resources_for_environment(name: str | None = None) -> dict[str, dg.ConfigurableResource]:
    env = name or os.environ.get("TLP_ENV", "local")
    if env == "local":
        return local_resources(tlp_home())
    if env == "production":
        return production_resources()
    raise ValueError(f"TLP_ENV={env!r} is not an environment; use one of {ENVIRONMENTS}")
