"""What every model stage records the same way: its data inputs, its sealed bundle in the registry, and links."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
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
        "content_sha256": manifest.content_sha256(),
        "weights_sha256": manifest.weights_sha256,
    }


def content_version(*parts: str) -> dg.DataVersion:
    """A data version from content hashes only (weights, data, config), never from when it was made."""
    return dg.DataVersion(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24])


def raise_if_gates_failed(context: dg.AssetExecutionContext, results: Sequence[dg.AssetCheckResult]) -> list[dg.AssetCheckResult]:
    """Pass the check results through when every gate passed; otherwise record them and fail the step.

    A failed gate leaves no materialisation: the catalogue keeps showing the last version that passed, and
    that is what downstream reads. The failed evaluations are still recorded (with their figures, against no
    materialisation), and the step's failure names them; it is not retried, as the gates are deterministic.
    """
    failed = [result for result in results if not result.passed]
    if not failed:
        return list(results)
    for result in results:
        context.log_event(
            dg.AssetCheckEvaluation(
                asset_key=context.asset_key,
                check_name=result.check_name or "",
                passed=result.passed,
                metadata=dict(result.metadata or {}),
                severity=result.severity,
                description=result.description,
            )
        )
    reasons = "; ".join(f"{r.check_name}: {r.description or 'failed'}" for r in failed)
    raise dg.Failure(
        description=(
            f"{context.asset_key.to_user_string()} failed its gate ({reasons}). Nothing was materialised: "
            "downstream keeps reading the last version that passed."
        ),
        metadata={"failed_checks": [r.check_name or "" for r in failed]},
        allow_retries=False,
    )


def png_markdown(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inlined into Markdown, so the Dagster UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
