"""MLflow as a Dagster resource: one tracked run per materialisation, tagged with its Dagster run and asset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from tl_platform.tracking.mlflow_tracker import (
    MlflowRunTracker,
    MlflowSettings,
    start_tracked_run,
)


class MlflowTracking(dg.ConfigurableResource):
    """Tracking URI and experiment; ``ui_base_url`` turns run ids into links in asset metadata."""

    tracking_uri: str
    experiment_name: str = "tl_platform"
    artifact_location: str | None = None
    ui_base_url: str | None = None

    def settings(self) -> MlflowSettings:
        return MlflowSettings(self.tracking_uri, self.experiment_name, self.artifact_location, self.ui_base_url)

    @contextmanager
    def run_for_asset(self, context: dg.AssetExecutionContext) -> Iterator[MlflowRunTracker]:
        asset_key = context.asset_key.to_user_string()
        tags = {"dagster.run_id": context.run_id, "dagster.asset_key": asset_key, "dagster.job": context.job_name}
        with start_tracked_run(self.settings(), run_name=f"{asset_key}-{context.run_id[:8]}", tags=tags) as tracker:
            yield tracker
