"""Dagster resources: the artifact store and MLflow tracking, and the choice of environment."""

from resources.artifact_store import ArtifactStore, StageNotMaterialisedError
from resources.environment import resources_for_environment, tlp_home
from resources.mlflow_tracking import MlflowTracking

__all__ = ["ArtifactStore", "MlflowTracking", "StageNotMaterialisedError", "resources_for_environment", "tlp_home"]
