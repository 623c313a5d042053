"""What every model stage records the same way: its data inputs, its sealed bundle in the registry, and links."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dagster as dg

from tl_platform.checkpoints import BundleManifest
from tl_platform.data.splits import DatasetSplits
from tl_platform.tracking.mlflow_tracker import MlflowRunTracker, RegisteredVersion

REGISTERED_MODEL_NAMES = {
    "foundation": "tlp-foundation",
    "domain_adapted": "tlp-domain-adapted",
    "task": "tlp-task",
}


def log_split_inputs(tracker: MlflowRunTracker, splits: DatasetSplits) -> None:
    """Each split becomes an MLflow dataset input whose digest is its content hash."""
    for name, split in splits.by_name().items():
        tracker.log_dataset(split, name=f"{name}", context=name, digest=split.content_hash())


def register_bundle(
    tracker: MlflowRunTracker, manifest: BundleManifest, context: dg.AssetExecutionContext
) -> RegisteredVersion:
    """Upload the bundle as artifacts of the run and register it as a new version of the stage's model."""
    tags = {
        "bundle_sha256": manifest.bundle_sha256,
        "weights_sha256": manifest.weights_sha256,
        "dagster.run_id": context.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
    }
    return tracker.log_bundle(manifest.path, "bundle", REGISTERED_MODEL_NAMES[manifest.stage], tags)


def tracking_metadata(tracker: MlflowRunTracker, version: RegisteredVersion | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"mlflow_run_id": tracker.run_id}
    if tracker.ui_url:
        metadata["mlflow_run"] = dg.MetadataValue.url(tracker.ui_url)
    if version is not None:
        metadata["registered_model"] = f"{version.name} v{version.version}"
    return metadata


def bundle_metadata(manifest: BundleManifest) -> dict[str, Any]:
    return {
        "bundle": dg.MetadataValue.path(str(manifest.path)),
        "bundle_sha256": manifest.bundle_sha256,
        "weights_sha256": manifest.weights_sha256,
    }


def png_markdown(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inlined into Markdown, so the Dagster UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
