"""The daily A/B decision and the move it makes: ship (champion to the challenger, a holdout kept) or roll back."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
from datetime import date, timedelta

import dagster as dg
from pydantic import Field

from assets.ab_records import ExperimentRecord, experiment_for_day, record_verdict
from assets.exported_model import SERVING_MODEL_NAME
from assets.monitoring_partitions import MONITOR_PARTITIONS, day_bounds
from assets.serving_state import publish_deployment, served_variant, write_split
from assets.stage_records import content_version, png_markdown
from resources.deployment_target import DeploymentTarget
from resources.mlflow_tracking import MlflowTracking
from resources.prediction_log import PredictionLogSource
from resources.stage_store import StageStore
from tl_platform.experiments.ab_aggregate import aggregate_for_spec
from tl_platform.experiments.ab_decision import ExperimentDecision, decide
from tl_platform.experiments.ab_plots import plot_daily_effects, plot_sample_progress
from tl_platform.experiments.ab_rollup import fold_for_spec
from tl_platform.experiments.ab_rollup_read import rollup_for_spec
from tl_platform.experiments.ab_rollup_state import RollupError
from tl_platform.experiments.ab_shadow import compare_shadow
from tl_platform.experiments.promotion import promote, retire
from tl_platform.serving.deployment import DeploymentRecord
from tl_platform.serving.log_schema import log_tables
from tl_platform.tracking.mlflow_tracker import MlflowRegistry, RegisteredVersion, set_run_tags

DECISION_CHECK = "experiment_is_valid"


class DecisionConfig(dg.Config):
    act: bool = Field(default=True, description="move aliases and traffic on a final verdict (False: report only)")


def _version(mlflow: MlflowTracking, version: str) -> RegisteredVersion:
    tags = MlflowRegistry(mlflow.settings()).version_tags(SERVING_MODEL_NAME, version)
    if tags is None:
        raise LookupError(f"{SERVING_MODEL_NAME} has no version {version!r}")
    return RegisteredVersion(SERVING_MODEL_NAME, version, "", tags)


def _act(decision: ExperimentDecision, record: ExperimentRecord, mlflow: MlflowTracking,
         target: DeploymentTarget, actor: str) -> dict[str, object]:
    """Ship: the challenger becomes champion, the old champion keeps the holdout share. Otherwise (roll back,
    invalid): the candidate is retired and every unit goes back to the champion."""
    spec, reason = record.spec, decision.summary()
    registry = MlflowRegistry(mlflow.settings())
    with mlflow.retry_when_unavailable():
        old, new = _version(mlflow, record.champion_version), _version(mlflow, record.challenger_version)
        if decision.verdict == "ship":
            moved = promote(registry, SERVING_MODEL_NAME, new.version, "champion", reason, actor).to_json()
            holdout = spec.holdout_share > 0
            serving = DeploymentRecord(
                champion=served_variant(new), challenger=served_variant(old) if holdout else None,
                challenger_share=spec.holdout_share if holdout else 0.0,
                experiment_id=f"{spec.experiment_id}-holdout"[:128] if holdout else None,
                routing_salt=spec.routing_salt if holdout else None,
            )
        else:
            moved = {"retired": record.challenger_version,
                     "alias_moved": retire(registry, SERVING_MODEL_NAME, new.version, reason, actor)}
            serving = DeploymentRecord(champion=served_variant(old))
        path = publish_deployment(target, serving, registry)
    return {"registry": moved, "record": str(path), "serving_state": serving.to_json()}


def _shadow_day(context: dg.AssetExecutionContext, config: DecisionConfig, record: ExperimentRecord, day: date,
                mlflow: MlflowTracking, prediction_log: PredictionLogSource,
                target: DeploymentTarget) -> dg.MaterializeResult:
    """A day of the shadow phase: how the silent challenger compares; on its last day the split starts."""
    start, _ = day_bounds(record.start_day.isoformat())
    _, end = day_bounds(day.isoformat())
    with prediction_log.open() as log:
        comparison = compare_shadow(log.engine, log_tables(log.table_prefix), record.spec.experiment_id, start, end)
    last = day == record.split_day - timedelta(days=1)
    switched = None
    if last and record.running and config.act and "tlp.ab.split_started" not in record.tags:
        with mlflow.retry_when_unavailable():
            old, new = _version(mlflow, record.champion_version), _version(mlflow, record.challenger_version)
        with mlflow.retry_when_unavailable():
            switched = str(write_split(target, MlflowRegistry(mlflow.settings()), old, new, record.spec, shadow=False))
            set_run_tags(mlflow.settings(), record.run_id, {"tlp.ab.split_started": record.split_day.isoformat()})
    summary = (f"{record.spec.experiment_id}: shadow day {(day - record.start_day).days + 1} of {record.shadow_days}: "
               f"{comparison.summary()}" + (f"; the split starts on {record.split_day}" if last else ""))
    context.log.info(summary)
    return dg.MaterializeResult(
        metadata={"experiment_id": record.spec.experiment_id, "verdict": "shadow", "summary": summary,
                  "shadow": dg.MetadataValue.json(comparison.to_json()),
                  "agreement_rate": comparison.agreement_rate if comparison.agreement_rate is not None else "n/a",
                  "disagreements": dg.MetadataValue.md(comparison.disagreement_table()),
                  "split_record": switched or "unchanged"},
        check_results=[dg.AssetCheckResult(check_name=DECISION_CHECK, passed=True, description="shadow phase: no split yet")],
        data_version=content_version(json.dumps(comparison.to_json(), sort_keys=True), str(switched)),
    )


@dg.asset(
    group_name="experiments",
    kinds={"mlflow"},
    partitions_def=MONITOR_PARTITIONS,
    deps=["ab_experiment", "prediction_log"],
    code_version="1",
    pool="model_registry",
    check_specs=[dg.AssetCheckSpec(DECISION_CHECK, asset="ab_decision",
                                   description="the randomisation held: no sample-ratio mismatch, no unit in both arms")],
    automation_condition=dg.AutomationCondition.on_cron("30 2 * * *"),
)
def ab_decision(
    context: dg.AssetExecutionContext,
    config: DecisionConfig,
    mlflow: MlflowTracking,
    stage_store: StageStore,
    deployment_target: DeploymentTarget,
    prediction_log: PredictionLogSource,
) -> dg.MaterializeResult:
    """The running experiment judged on the data up to the end of this day: ship, roll back, keep running, or
    invalid, with the reasons (primary metric, sequential test, each guardrail, SRM, slices, duration).

    A final verdict acts once per experiment: ship promotes the challenger to champion and keeps the spec's
    holdout on the old model; roll back (or invalid) retires the candidate and returns all traffic to the
    champion. Re-materialising a day re-computes and reports, and never moves anything twice.
    """
    day = date.fromisoformat(context.partition_key)
    record = experiment_for_day(mlflow, day)
    if record is None or day < record.start_day:
        note = "no A/B experiment was running on this day"
        context.log.info(f"{context.partition_key}: {note}")
        return dg.MaterializeResult(metadata={"verdict": "none", "summary": note},
                                    check_results=[dg.AssetCheckResult(check_name=DECISION_CHECK, passed=True,
                                                                       description=note)],
                                    data_version=content_version("none", context.partition_key))
    if day < record.split_day:
        return _shadow_day(context, config, record, day, mlflow, prediction_log, deployment_target)
    spec = record.spec
    start, _ = day_bounds(record.split_day.isoformat())
    _, end = day_bounds(context.partition_key)
    with prediction_log.open() as log:
        tables = log_tables(log.table_prefix)
        try:  # fold only what is new into the rollup, then read a few hundred rows instead of the whole log
            fold_for_spec(log.engine, tables, spec, start, end)
            aggregates = rollup_for_spec(log.engine, tables, spec, start, end)
        except RollupError as err:  # a past day re-materialised: the rollup is folded past its end
            context.log.info(f"recomputing {context.partition_key} from the log: {err}")
            aggregates = aggregate_for_spec(log.engine, tables, spec, start, end)
    decision = decide(spec, aggregates, record.split_day, day)
    final = decision.verdict in ("ship", "roll_back", "invalid")
    acted: dict[str, object] = {}
    if not record.running:
        why = f"the experiment already ended: {record.status} on {record.decided_on}; nothing moves"
        acted = {"skipped": why}
    elif final and config.act:
        acted = _act(decision, record, mlflow, deployment_target, f"dagster run {context.run_id}")
    if record.running and ((final and config.act) or not final):
        record_verdict(mlflow, record, day, decision.verdict)
    context.log.info(decision.summary())

    output = stage_store.output_dir(context)
    (output / "decision.json").write_text(json.dumps(decision.to_json(), indent=2, sort_keys=True, default=str))
    effects = plot_daily_effects(decision, output / "daily_effects.png")
    sample = plot_sample_progress(decision, output / "sample_progress.png")
    with mlflow.run_for_asset(context) as tracker:
        tracker.set_tags({"tlp.ab.experiment_id": spec.experiment_id, "tlp.ab.day": context.partition_key,
                          "tlp.ab.verdict_of_day": decision.verdict})
        if decision.primary.difference is not None:
            tracker.log_metrics({"ab.difference": decision.primary.difference,
                                 "ab.units_champion": decision.observed_units["champion"],
                                 "ab.units_challenger": decision.observed_units["challenger"]})
        for path in (output / "decision.json", effects, sample):
            tracker.log_artifact(path)
        run_id = tracker.run_id
    stored = stage_store.save(context, output)
    return dg.MaterializeResult(
        metadata={
            **stored,
            "experiment_id": spec.experiment_id,
            "verdict": decision.verdict,
            "summary": decision.summary(),
            "reasons": dg.MetadataValue.json(list(decision.reasons)),
            "days_run": decision.days_run,
            "primary": dg.MetadataValue.json(decision.primary.to_json()),
            "units": dg.MetadataValue.json({"observed": decision.observed_units, "required": decision.required_units}),
            "rows_without_unit": decision.rows_without_unit,
            "srm": dg.MetadataValue.json(decision.srm.to_json()),
            "guardrails": dg.MetadataValue.md(decision.guardrail_table()),
            "slices": dg.MetadataValue.md(decision.slice_table()),
            "daily_effects": png_markdown(effects, "daily effect with 95% bands"),
            "sample_progress": png_markdown(sample, "cumulative sample against the plan"),
            "action": dg.MetadataValue.json(json.loads(json.dumps(acted, default=str))),
            "mlflow_run_id": run_id,
        },
        check_results=[dg.AssetCheckResult(
            check_name=DECISION_CHECK, passed=decision.verdict != "invalid", severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(decision.reasons) if decision.verdict == "invalid" else decision.srm.reason,
        )],
        data_version=content_version(json.dumps(decision.to_json(), sort_keys=True, default=str)),
    )
