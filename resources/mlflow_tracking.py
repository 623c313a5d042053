"""MLflow as a Dagster resource: one tracked run per materialisation, tagged with its Dagster run and asset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from tl_platform.tracking.mlflow_tracker import (
    MlflowRunTracker,
    MlflowSettings,
    is_tracking_unavailable,
    start_tracked_run,
)


class TrackingUnavailableError(RuntimeError):
    """The tracking store could not be reached or was busy; the message names its URI."""


class MlflowTracking(dg.ConfigurableResource):
    """Tracking URI and experiment; ``ui_base_url`` turns run ids into links in asset metadata."""

    tracking_uri: str
    experiment_name: str = "tl_platform"
    artifact_location: str | None = None
    ui_base_url: str | None = None
    unavailable_retries: int = 3
    unavailable_wait_s: float = 30.0

    def settings(self) -> MlflowSettings:
        return MlflowSettings(self.tracking_uri, self.experiment_name, self.artifact_location, self.ui_base_url)

    @contextmanager
    def retry_when_unavailable(self) -> Iterator[None]:
        """Turn an unreachable or busy tracking store into a Dagster retry; any other error fails the step.

        Only transient failures are retried: a bad config or a failed gate would fail the same way again.
        """
        try:
            yield
        except Exception as err:
            if not is_tracking_unavailable(err):
                raise
            unreachable = TrackingUnavailableError(
                f"the MLflow tracking store at {self.tracking_uri} could not be reached or was busy "
                f"({type(err).__name__}: {str(err)[:300]}); the step is retried {self.unavailable_retries} times, "
                f"{self.unavailable_wait_s:g} s apart"
            )
            unreachable.__cause__ = err
            raise dg.RetryRequested(max_retries=self.unavailable_retries, seconds_to_wait=self.unavailable_wait_s) from unreachable

    @contextmanager
    def run_for_asset(self, context: dg.AssetExecutionContext) -> Iterator[MlflowRunTracker]:
        asset_key = context.asset_key.to_user_string()
        tags = {
            "dagster.run_id": context.run_id,
            "dagster.asset_key": asset_key,
            "dagster.job": context.job_name,
            **device_tags(),
        }
        with (
            self.retry_when_unavailable(),
            start_tracked_run(self.settings(), run_name=f"{asset_key}-{context.run_id[:8]}", tags=tags) as tracker,
        ):
            yield tracker


def device_tags() -> dict[str, str]:
    """What the stage runs on, so the cost report prices measured device-hours: a known GPU model, or CPU cores."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        # an unknown GPU model is tagged by name; the cost report then asks for its price instead of guessing
        kind = "h100" if "h100" in name else "a100" if "a100" in name else name.replace(" ", "-")
        return {"tlp.device_type": kind, "tlp.device_count": str(torch.cuda.device_count())}
    return {"tlp.device_type": "cpu", "tlp.device_count": str(len(os.sched_getaffinity(0)))}
