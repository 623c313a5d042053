"""The one Dagster code location: every asset, check, job, sensor and resource of tl_platform."""

from __future__ import annotations

import dagster as dg

from assets import TRANSFER_ASSETS
from resources import resources_for_environment

main_job = dg.define_asset_job(
    "main_job",
    selection=dg.AssetSelection.assets(*TRANSFER_ASSETS),
    description="Labelled data to a fine-tuned task model: foundation, domain-adaptive pretraining, fine-tuning.",
)

defs = dg.Definitions(
    assets=TRANSFER_ASSETS,
    jobs=[main_job],
    resources=resources_for_environment(),
)
