"""Software-defined assets, one module per pipeline stage."""

from assets.deployment import deployment
from assets.domain_adapted import domain_adapted_model
from assets.exported_model import exported_model
from assets.foundation import foundation_model
from assets.labelled_data import labelled_data
from assets.planning import PLANNING_ASSETS, cost_report, roi_curve, transfer_plan
from assets.task_model import task_model

TRANSFER_ASSETS = [labelled_data, foundation_model, domain_adapted_model, task_model]
SERVING_ASSETS = [exported_model, deployment]

__all__ = [
    "PLANNING_ASSETS",
    "SERVING_ASSETS",
    "TRANSFER_ASSETS",
    "cost_report",
    "deployment",
    "domain_adapted_model",
    "exported_model",
    "foundation_model",
    "labelled_data",
    "roi_curve",
    "task_model",
    "transfer_plan",
]
