"""Dagster resources: the artifact store and MLflow tracking, and the choice of environment."""

from resources.artifact_store import ArtifactStore, StageNotMaterialisedError
from resources.deployment_target import DeploymentTarget
from resources.environment import resources_for_environment, tlp_home
from resources.mlflow_tracking import MlflowTracking

__all__ = ["ArtifactStore", "DeploymentTarget", "MlflowTracking", "StageNotMaterialisedError", "resources_for_environment", "tlp_home"]
