"""The one Dagster code location: every asset, check, job, sensor and resource of tl_platform."""

from __future__ import annotations

import dagster as dg

from assets import (
    COMPARISON_ASSETS,
    EXPERIMENT_ASSETS,
    MONITORING_ASSETS,
    PLANNING_ASSETS,
    SERVING_ASSETS,
    TRANSFER_ASSETS,
)
from assets.monitoring_partitions import MONITOR_PARTITIONS
from resources import resources_for_environment
from sensors import SENSORS, retrain_job

main_job = dg.define_asset_job(
    "main_job",
    selection=dg.AssetSelection.assets(*TRANSFER_ASSETS, *SERVING_ASSETS),
    description="Labelled data to a servable model: foundation, domain-adaptive pretraining, fine-tuning, export.",
)

# The loop's other steps as jobs, so each run is named for what it does in the UI (and `tlp run` drives them).
monitor_job = dg.define_asset_job(
    "monitor_job", selection=dg.AssetSelection.assets("feature_drift", "canary_accuracy"),
    partitions_def=MONITOR_PARTITIONS, description="One day's drift and labelled-canary verdicts for the live model.",
)
ab_start_job = dg.define_asset_job(
    "ab_start_job", selection=dg.AssetSelection.assets("ab_experiment"),
    description="Pre-register an A/B experiment and send the candidate its share of traffic (shadow first if asked).",
)
ab_decision_job = dg.define_asset_job(
    "ab_decision_job", selection=dg.AssetSelection.assets("ab_decision"), partitions_def=MONITOR_PARTITIONS,
    description="One day's A/B decision: keep running, ship (with a holdout) or roll back, with its reasons.",
)
plan_job = dg.define_asset_job(
    "plan_job", selection=dg.AssetSelection.assets("labelled_data", "foundation_model", "transfer_plan"),
    description="The transfer plan: which recipe the measured data call for, and the main job's run config.",
)
proposal_job = dg.define_asset_job(
    "proposal_job", selection=dg.AssetSelection.assets("cost_report", "roi_curve"),
    description="The cost report from the measured runs and the 12-month ROI curve.",
)

defs = dg.Definitions(
    # The planning assets stay out of main_job: roi_curve needs a named owner of the monitoring loop, and
    # plan_comparison trains two models (materialise it on request, or `tlp plan --compare`).
    assets=[*TRANSFER_ASSETS, *SERVING_ASSETS, *MONITORING_ASSETS, *EXPERIMENT_ASSETS, *PLANNING_ASSETS,
            *COMPARISON_ASSETS],
    jobs=[main_job, retrain_job, monitor_job, ab_start_job, ab_decision_job, plan_job, proposal_job],
    sensors=SENSORS,
    resources=resources_for_environment(),
)
