"""Software-defined assets, one module per pipeline stage."""

import dagster as dg

from assets.ab_decision import ab_decision
from assets.ab_experiment import ab_experiment
from assets.deployment import deployment
from assets.domain_adapted import domain_adapted_model
from assets.exported_model import exported_model
from assets.foundation import foundation_model
from assets.labelled_data import labelled_data
from assets.monitoring import canary_accuracy, feature_drift, prediction_log
from assets.plan_comparison import plan_comparison
from assets.planning import PLANNING_ASSETS, cost_report, roi_curve, transfer_plan
from assets.retraining import candidate_model, retrained_model
from assets.task_model import task_model

TRANSFER_ASSETS = [labelled_data, foundation_model, domain_adapted_model, task_model]
SERVING_ASSETS = [exported_model, deployment]
MONITORING_ASSETS: list[dg.AssetsDefinition | dg.AssetSpec] = [prediction_log, feature_drift, canary_accuracy, retrained_model, candidate_model]
EXPERIMENT_ASSETS = [ab_experiment, ab_decision]
# trains two models: materialised on request, in no job the loop runs (not in PLANNING_ASSETS for that reason)
COMPARISON_ASSETS = [plan_comparison]

__all__ = [
    "COMPARISON_ASSETS",
    "EXPERIMENT_ASSETS",
    "MONITORING_ASSETS",
    "PLANNING_ASSETS",
    "SERVING_ASSETS",
    "TRANSFER_ASSETS",
    "ab_decision",
    "ab_experiment",
    "canary_accuracy",
    "candidate_model",
    "cost_report",
    "deployment",
    "domain_adapted_model",
    "exported_model",
    "feature_drift",
    "foundation_model",
    "labelled_data",
    "plan_comparison",
    "prediction_log",
    "retrained_model",
    "roi_curve",
    "task_model",
    "transfer_plan",
]
