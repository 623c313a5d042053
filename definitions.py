"""The one Dagster code location: every asset, check, job, sensor and resource of tl_platform."""

from __future__ import annotations

import dagster as dg

from assets import EXPERIMENT_ASSETS, MONITORING_ASSETS, PLANNING_ASSETS, SERVING_ASSETS, TRANSFER_ASSETS
from resources import resources_for_environment
from sensors import SENSORS, retrain_job

main_job = dg.define_asset_job(
    "main_job",
    selection=dg.AssetSelection.assets(*TRANSFER_ASSETS, *SERVING_ASSETS),
    description="Labelled data to a servable model: foundation, domain-adaptive pretraining, fine-tuning, export.",
)

defs = dg.Definitions(
    # The planning assets stay out of main_job: roi_curve needs a named owner of the monitoring loop.
    assets=[*TRANSFER_ASSETS, *SERVING_ASSETS, *MONITORING_ASSETS, *EXPERIMENT_ASSETS, *PLANNING_ASSETS],
    jobs=[main_job, retrain_job],
    sensors=SENSORS,
    resources=resources_for_environment(),
)
