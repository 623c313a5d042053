"""Dagster resources: the stage store, MLflow tracking, the deployment target, and the choice of environment."""

from resources.alerts import AlertRoute
from resources.deployment_target import DeploymentTarget
from resources.environment import resources_for_environment, tlp_home
from resources.mlflow_tracking import MlflowTracking
from resources.prediction_log import PredictionLogSource
from resources.retrain_policy import RetrainPolicy
from resources.stage_store import StageOutputError, StageStore, UpstreamOutput, lineage_metadata

__all__ = [
    "AlertRoute",
    "DeploymentTarget",
    "MlflowTracking",
    "PredictionLogSource",
    "RetrainPolicy",
    "StageOutputError",
    "StageStore",
    "UpstreamOutput",
    "lineage_metadata",
    "resources_for_environment",
    "tlp_home",
]
