"""Experiment tracking behind a small Protocol, so training code never sees MLflow (or Dagster)."""

from tl_platform.tracking.protocol import NullTracker, RunTracker

__all__ = ["NullTracker", "RunTracker"]
