"""From a registered serving version to its bundles: the exported one monitoring judges, the task one retraining continues."""

from __future__ import annotations

import json
from pathlib import Path

from assets.exported_model import SERVING_MODEL_NAME
from assets.stage_records import REGISTERED_MODEL_NAMES
from resources.mlflow_tracking import MlflowTracking
from tl_platform.checkpoints import verify_bundle
from tl_platform.tracking.mlflow_tracker import MlflowRegistry, download_version, version_by_alias, version_by_tag


def exported_bundle_of(mlflow: MlflowTracking, version: str) -> Path:
    """The exported bundle of serving version ``version``, checked against the digest the registry recorded."""
    with mlflow.retry_when_unavailable():
        tags = MlflowRegistry(mlflow.settings()).version_tags(SERVING_MODEL_NAME, version)
    if tags is None:
        raise LookupError(f"{SERVING_MODEL_NAME} has no version {version!r} in the registry at {mlflow.tracking_uri}")
    if "bundle_path" not in tags:
        raise LookupError(f"{SERVING_MODEL_NAME} v{version} records no bundle_path tag; it was not registered by exported_model")
    manifest = verify_bundle(Path(tags["bundle_path"]), expected_stage="exported")
    if tags.get("bundle_sha256") and tags["bundle_sha256"] != manifest.bundle_sha256:
        raise ValueError(
            f"{SERVING_MODEL_NAME} v{version}: {manifest.path} has manifest SHA-256 {manifest.bundle_sha256}, the "
            f"registry recorded {tags['bundle_sha256']}; the bundle was replaced after registration"
        )
    return manifest.path


def champion_version(mlflow: MlflowTracking) -> str:
    with mlflow.retry_when_unavailable():
        champion = version_by_alias(mlflow.settings(), SERVING_MODEL_NAME, "champion")
    if champion is None:
        raise LookupError(f"{SERVING_MODEL_NAME} has no 'champion' alias: nothing serves yet; materialise deployment first")
    return champion.version


def task_bundle_of(mlflow: MlflowTracking, version: str, cache_dir: Path) -> Path:
    """The task bundle (PyTorch weights) that serving version ``version`` was exported from, from the registry.

    Found by the digest the exported bundle names, downloaded from the tracking server's artifact store into
    ``cache_dir`` (once per digest) and verified, so it works wherever the artifacts live.
    """
    exported = exported_bundle_of(mlflow, version)
    digest = str(json.loads((exported / "serving.json").read_text())["task_bundle_sha256"])
    target = cache_dir / "task_bundles" / digest
    if (target / "bundle").is_dir():
        return verify_bundle(target / "bundle", expected_stage="task").path
    with mlflow.retry_when_unavailable():
        registered = version_by_tag(mlflow.settings(), REGISTERED_MODEL_NAMES["task"], "bundle_sha256", digest)
        if registered is None:
            raise LookupError(
                f"no version of {REGISTERED_MODEL_NAMES['task']} carries bundle_sha256={digest} (the task bundle of "
                f"{SERVING_MODEL_NAME} v{version}); was it registered by task_model or retrained_model?"
            )
        downloaded = download_version(mlflow.settings(), registered, target)
    manifest = verify_bundle(downloaded, expected_stage="task")
    if manifest.bundle_sha256 != digest:
        raise ValueError(f"downloaded task bundle {manifest.path} has digest {manifest.bundle_sha256}, expected {digest}")
    return manifest.path
