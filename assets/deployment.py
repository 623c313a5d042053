"""The serving state: which registered versions serve as champion and challenger, the split, and shadow mode."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json

import dagster as dg
from pydantic import Field

from assets.exported_model import SERVING_MODEL_NAME
from assets.serving_state import publish_deployment, served_variant
from assets.stage_records import content_version
from resources.deployment_target import DeploymentTarget
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.experiments.promotion import ensure_champion
from tl_platform.serving.deployment import DeploymentRecord
from tl_platform.tracking.mlflow_tracker import MlflowRegistry, version_by_alias


class DeploymentConfig(dg.Config):
    challenger_share: float = Field(default=0.0, description="share of units routed to the challenger, in [0, 1]")
    shadow: bool = Field(default=False, description="the challenger scores every request silently")
    precision: str = Field(
        default="auto",
        description="auto (each bundle in the precision its export chose: int8 where INT8 passed its gate, else "
        "fp32), fp32 for both, or int8 for both (refused for a bundle whose INT8 failed its gate)",
    )


@dg.asset(group_name="serving", kinds={"mlflow"}, deps=["exported_model"], code_version="3", pool="model_registry")
def deployment(
    context: dg.AssetExecutionContext,
    config: DeploymentConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
    deployment_target: DeploymentTarget,
) -> dg.MaterializeResult:
    """What the serving API serves, written to the one record the server watches.

    Resolves the registry aliases ``champion`` and ``challenger`` of the serving model to their exported
    bundles and records them, with their manifest digests, the precision each serves in (by default the one
    its export chose: FP32 where INT8 failed its gate), the traffic split and shadow mode. It moves an
    alias only to bootstrap: a registry without a champion gets the export this run's lineage names as its
    first champion. Later exports wait as candidates until promotion (an A/B decision or `tlp promote`).
    Re-materialising this asset after an alias moved hot-swaps the server, with no failed request.
    """
    exported = stage_store.upstream(context, "exported_model")
    candidate = str(exported.materialisation.metadata["registered_version"].value)
    settings = mlflow.settings()
    with mlflow.retry_when_unavailable():
        bootstrap = ensure_champion(MlflowRegistry(settings), SERVING_MODEL_NAME, candidate, f"dagster run {context.run_id}")
        champion = version_by_alias(settings, SERVING_MODEL_NAME, "champion")
        challenger = version_by_alias(settings, SERVING_MODEL_NAME, "challenger")
    if champion is None:
        raise ValueError(f"{SERVING_MODEL_NAME} has no 'champion' alias; materialise exported_model first")
    if challenger is not None and challenger.version == champion.version:
        challenger = None  # a promoted challenger: the alias still names the champion's version
    if challenger is None and (config.challenger_share > 0 or config.shadow):
        raise ValueError(
            f"deployment asks for challenger_share={config.challenger_share} and shadow={config.shadow}, but "
            f"{SERVING_MODEL_NAME} has no 'challenger' alias distinct from the champion; promote a candidate "
            "first (`tlp promote VERSION --alias challenger --reason ...`)"
        )
    record = DeploymentRecord(
        champion=served_variant(champion, config.precision),
        challenger=served_variant(challenger, config.precision) if challenger is not None else None,
        challenger_share=config.challenger_share,
        shadow=config.shadow,
    )
    with mlflow.retry_when_unavailable():
        path = publish_deployment(deployment_target, record, MlflowRegistry(settings))
    serving = {champion.version, challenger.version if challenger is not None else None}
    waiting = "no" if candidate in serving else f"v{candidate} awaits promotion (an A/B experiment or tlp promote)"
    context.log.info(f"deployment record written to {path}; champion v{champion.version}; candidate: {waiting}")
    return dg.MaterializeResult(
        metadata={
            **lineage_metadata(exported),
            "record": dg.MetadataValue.path(str(path)),
            "champion_version": champion.version,
            "challenger_version": challenger.version if challenger is not None else "none",
            "candidate_version": candidate,
            "candidate_waiting": waiting,
            "bootstrap_promotion": dg.MetadataValue.json(bootstrap.to_json() if bootstrap is not None else {}),
            "challenger_share": record.challenger_share,
            "shadow": record.shadow,
            "precision": config.precision,
            "champion_precision": record.champion.precision,
            "challenger_precision": record.challenger.precision if record.challenger is not None else "none",
            "serving_state": dg.MetadataValue.json(record.to_json()),
        },
        # what serves (versions and bundle digests, split, shadow), not when the record was written
        data_version=content_version(json.dumps({k: v for k, v in record.to_json().items() if k != "updated_at"}, sort_keys=True)),
    )
