"""The serving state: which registered versions serve as champion and challenger, the split, and shadow mode."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.exported_model import SERVING_MODEL_NAME
from resources.deployment_target import DeploymentTarget
from resources.mlflow_tracking import MlflowTracking
from tl_platform.checkpoints import verify_bundle
from tl_platform.serving.deployment import DeploymentRecord, VariantSpec, write_deployment_record
from tl_platform.tracking.mlflow_tracker import RegisteredVersion, version_by_alias


class DeploymentConfig(dg.Config):
    challenger_share: float = Field(default=0.0, description="share of units routed to the challenger, in [0, 1]")
    shadow: bool = Field(default=False, description="the challenger scores every request silently")
    precision: str = Field(default="int8", description="int8 or fp32: which ONNX graph of each bundle serves")


def _variant(version: RegisteredVersion, precision: str) -> VariantSpec:
    bundle = Path((version.tags or {}).get("bundle_path", ""))
    verify_bundle(bundle, expected_stage="exported")  # refuse to point the server at a missing or altered bundle
    return VariantSpec(version=version.version, bundle=bundle, precision=precision)  # type: ignore[arg-type]


@dg.asset(group_name="serving", kinds={"mlflow"}, deps=["exported_model"])
def deployment(
    context: dg.AssetExecutionContext,
    config: DeploymentConfig,
    mlflow: MlflowTracking,
    deployment_target: DeploymentTarget,
) -> dg.MaterializeResult:
    """What the serving API serves, written to the one record the server watches.

    Resolves the registry aliases ``champion`` and ``challenger`` of the serving model to their exported
    bundles and records them with the traffic split and shadow mode. Moving an alias and re-materialising
    this asset hot-swaps the server, with no failed request during the swap.
    """
    settings = mlflow.settings()
    champion = version_by_alias(settings, SERVING_MODEL_NAME, "champion")
    if champion is None:
        raise ValueError(f"{SERVING_MODEL_NAME} has no 'champion' alias; materialise exported_model first")
    challenger = version_by_alias(settings, SERVING_MODEL_NAME, "challenger")
    if challenger is not None and challenger.version == champion.version:
        challenger = None  # a promoted challenger: the alias still names the champion's version
    if challenger is None and (config.challenger_share > 0 or config.shadow):
        raise ValueError(
            f"deployment asks for challenger_share={config.challenger_share} and shadow={config.shadow}, but "
            f"{SERVING_MODEL_NAME} has no 'challenger' alias distinct from the champion; export a candidate first"
        )
    record = DeploymentRecord(
        champion=_variant(champion, config.precision),
        challenger=_variant(challenger, config.precision) if challenger is not None else None,
        challenger_share=config.challenger_share,
        shadow=config.shadow,
    )
    path = write_deployment_record(deployment_target.path(), record)
    context.log.info(f"deployment record written to {path}")
    return dg.MaterializeResult(
        metadata={
            "record": dg.MetadataValue.path(str(path)),
            "champion_version": champion.version,
            "challenger_version": challenger.version if challenger is not None else "none",
            "challenger_share": record.challenger_share,
            "shadow": record.shadow,
            "precision": config.precision,
            "serving_state": dg.MetadataValue.json(record.to_json()),
        }
    )
