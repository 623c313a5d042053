"""Economics of transfer learning: the transfer plan, the cost report, the ROI curve and the proposal report.

Pure and typed: measured inputs come in (label counts, embeddings through an ``Embedder``, tracked runs as
dicts), frozen results go out. Nothing here imports Dagster or MLflow.
"""

from __future__ import annotations

from tl_platform.economics.cost_report import CostReport, CostSettings, build_cost_report
from tl_platform.economics.decision import PlanSettings, Recipe, TransferPlan, plan_transfer, run_config_for
from tl_platform.economics.roi import RoiInputs, RoiResult, roi_model

__all__ = [
    "CostReport",
    "CostSettings",
    "PlanSettings",
    "Recipe",
    "RoiInputs",
    "RoiResult",
    "TransferPlan",
    "build_cost_report",
    "plan_transfer",
    "roi_model",
    "run_config_for",
]
