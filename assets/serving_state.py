"""Writing what serves: registered versions resolved to verified bundles, in the record the servers watch.

``deployment`` writes it from the aliases; the A/B assets write it to start a split and to end one. It is
published twice: as the file a server on this machine watches, and as the serving model's registry tag that
replicas elsewhere read (``--registry-model``), downloading the versions it names from the tracking server.
"""

import json
from dataclasses import replace
from pathlib import Path

from assets.exported_model import SERVING_MODEL_NAME
from resources.deployment_target import DeploymentTarget
from tl_platform.checkpoints import verify_bundle
from tl_platform.experiments.ab_spec import ExperimentSpec
from tl_platform.export.precision import resolve_precision
from tl_platform.serving.deployment import DeploymentRecord, VariantSpec, write_deployment_record
from tl_platform.serving.record_source import RECORD_TAG
from tl_platform.tracking.mlflow_tracker import MlflowRegistry, RegisteredVersion


def variant_of(version: RegisteredVersion, precision: str) -> VariantSpec:
    """The version's exported bundle, verified against the digest the registry recorded, as a served variant."""
    tags = version.tags or {}
    bundle = Path(tags.get("bundle_path", ""))
    # refuse to point the server at a missing or altered bundle; the server checks the same digest again
    manifest = verify_bundle(bundle, expected_stage="exported")
    recorded = tags.get("bundle_sha256")
    if recorded and recorded != manifest.bundle_sha256:
        raise ValueError(
            f"{version.name} v{version.version}: the bundle at {bundle} has manifest SHA-256 {manifest.bundle_sha256}, "
            f"the registry recorded {recorded}; the bundle was replaced after registration"
        )
    return VariantSpec(
        version=version.version, bundle=bundle, precision=precision,  # type: ignore[arg-type]
        bundle_sha256=manifest.bundle_sha256,
    )


def served_variant(version: RegisteredVersion, requested: str = "auto") -> VariantSpec:
    """The version's verified bundle in ``requested`` precision, resolved against what its export recorded
    (``auto``: INT8 where INT8 passed its gate, else FP32)."""
    spec = variant_of(version, "fp32")  # verified first: the precision is then read from the verified bundle
    precision = resolve_precision(requested, spec.bundle, f"{version.name} v{version.version}")
    return replace(spec, precision=precision)


def publish_deployment(target: DeploymentTarget, record: DeploymentRecord, registry: MlflowRegistry) -> Path:
    """Write the record file, then the serving model's registry tag; return the file's path."""
    path = write_deployment_record(target.path(), record)
    registry.set_model_tag(SERVING_MODEL_NAME, RECORD_TAG, json.dumps(record.to_json(), sort_keys=True))
    return path


def write_split(target: DeploymentTarget, registry: MlflowRegistry, champion: RegisteredVersion,
                challenger: RegisteredVersion, spec: ExperimentSpec, shadow: bool) -> Path:
    """The experiment's serving state: the challenger in shadow (every caller sees the champion), or on the
    spec's share of units, routed by the experiment's own salt."""
    record = DeploymentRecord(
        champion=served_variant(champion), challenger=served_variant(challenger),
        challenger_share=0.0 if shadow else spec.challenger_share, shadow=shadow,
        experiment_id=spec.experiment_id, routing_salt=spec.routing_salt,
    )
    return publish_deployment(target, record, registry)
