"""Dagster resources: the artifact store and MLflow tracking, and the choice of environment."""

from resources.artifact_store import ArtifactStore
from resources.deployment_target import DeploymentTarget
from resources.environment import resources_for_environment, tlp_home
from resources.mlflow_tracking import MlflowTracking
from tl_platform.local_state import StageNotMaterialisedError

__all__ = ["ArtifactStore", "DeploymentTarget", "MlflowTracking", "StageNotMaterialisedError", "resources_for_environment", "tlp_home"]
