"""The retrain the trigger sensor asks for: fresh labelled traffic plus replay, guarded against forgetting, then exported."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
import shutil
from datetime import timedelta
from typing import cast

import dagster as dg
from pydantic import Field

from assets.exported_model import ExportedModelConfig, export_and_register, export_gate_specs
from assets.live_model import champion_version, task_bundle_of
from assets.monitoring_partitions import MONITOR_PARTITIONS, day_bounds
from assets.stage_records import (
    bundle_metadata,
    content_version,
    log_split_inputs,
    raise_if_gates_failed,
    register_bundle,
    tracking_metadata,
)
from resources.mlflow_tracking import MlflowTracking
from resources.prediction_log import PredictionLogSource
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.checkpoints import capture_provenance, load_bundle, verify_bundle, write_bundle
from tl_platform.data.splits import jsonl_bytes, read_splits
from tl_platform.training.classifier import fine_tune_classifier
from tl_platform.training.config import FineTuneConfig
from tl_platform.training.retraining import (
    ForgettingReport,
    RetrainConfig,
    build_retrain_data,
    classifier_accuracy,
    fresh_dataset,
)

BEATS_LIVE_CHECK = "beats_live_model_on_fresh_data"
FORGETTING_CHECK = "no_forgetting_on_previous_test_set"
# Continuing from the live model's weights, a lower rate keeps what it knew (bench/retrain_recovery.py, slang
# shift, 300 fresh rows, replay 2: 0.3 x 1e-3 recovered 53% of the cost and lost 0.5 points; 1e-3 lost 1.5 to 3.5).
LIVE_RATE_SCALE = 0.3
LIVE_PATIENCE = 4
TRIGGER_TAGS = ("tlp/trigger_window", "tlp/drift_summary", "tlp/canary_summary")


class RetrainedModelConfig(dg.Config):
    """What the retrain trains on, where it starts, and what it must prove (``RetrainConfig`` validates the rest)."""

    fresh_days: int = Field(default=14, description="labelled traffic served in the window's day and the days before it")
    start_from: str = Field(default="live", description="live (continue the champion's weights) or foundation")
    replay_ratio: float = Field(default=2.0, description="replay rows of the earlier training data per fresh training row")
    max_replay_rows: int = 2000
    fresh_validation_fraction: float = 0.15
    fresh_test_fraction: float = 0.3
    min_fresh_rows: int = 60
    min_fresh_gain_points: float = Field(default=0.0, description="the candidate must beat live on fresh data by more")
    max_forgetting_points: float = Field(default=1.0, description="points the candidate may lose on the previous test set")
    epochs: int | None = Field(default=None, description="training epochs; the live model's recipe when unset")
    learning_rate: float | None = Field(
        default=None,
        description="head learning rate; unset: the recipe's from the foundation, 0.3 x the recipe's from live "
                    "(LoRA 3e-4: at the recipe's 1e-3 a retrain forgot 1.5 to 3.5 points, bench/retrain_recovery.py)",
    )
    early_stopping_patience: int | None = Field(
        default=None, description="epochs without a lower validation loss; unset: the recipe's from the foundation, "
                                  "4 from live (the lower rate needs more epochs)",
    )
    seed: int = 0

    def retrain(self) -> RetrainConfig:
        return RetrainConfig(
            replay_ratio=self.replay_ratio, max_replay_rows=self.max_replay_rows,
            fresh_validation_fraction=self.fresh_validation_fraction, fresh_test_fraction=self.fresh_test_fraction,
            min_fresh_rows=self.min_fresh_rows, min_fresh_gain_points=self.min_fresh_gain_points,
            max_forgetting_points=self.max_forgetting_points, seed=self.seed,
        )

    def fine_tune(self, recipe: dict[str, object]) -> FineTuneConfig:
        """The live model's own recipe (its provenance), with this config's overrides."""
        if self.start_from not in ("live", "foundation"):
            raise ValueError(f"retrained_model.start_from must be 'live' or 'foundation', got {self.start_from!r}")
        fields = {**recipe, "lora_target_modules": tuple(cast(list[str], recipe["lora_target_modules"])), "seed": self.seed}
        if self.epochs is not None:
            fields["epochs"] = self.epochs
        recipe_config = FineTuneConfig(**fields)  # type: ignore[arg-type]
        if self.learning_rate is not None:
            fields["learning_rate"] = self.learning_rate
        elif self.start_from == "live":
            fields["learning_rate"] = LIVE_RATE_SCALE * recipe_config.base_learning_rate
        if self.early_stopping_patience is not None:
            fields["early_stopping_patience"] = self.early_stopping_patience
        elif self.start_from == "live":
            fields["early_stopping_patience"] = max(LIVE_PATIENCE, recipe_config.early_stopping_patience)
        return FineTuneConfig(**fields)  # type: ignore[arg-type]


@dg.asset(
    group_name="monitoring",
    kinds={"pytorch", "mlflow"},
    partitions_def=MONITOR_PARTITIONS,
    deps=["feature_drift", "canary_accuracy", "labelled_data", "foundation_model"],
    code_version="2",  # 2: the live recipe's truncation (head or head_tail) in training and judging
    pool="training",
    check_specs=[
        dg.AssetCheckSpec(BEATS_LIVE_CHECK, asset="retrained_model", blocking=True,
                          description="the retrained model is more accurate than the live one on held-out fresh traffic"),
        dg.AssetCheckSpec(FORGETTING_CHECK, asset="retrained_model", blocking=True,
                          description="the retrained model loses at most the margin on the previous test set"),
    ],
)
def retrained_model(
    context: dg.AssetExecutionContext,
    config: RetrainedModelConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
    prediction_log: PredictionLogSource,
) -> dg.MaterializeResult:
    """The live model retrained on the window's labelled production traffic plus a replay buffer of its old data.

    Requested by the drift-and-canary sensor for one day window (or by hand for any window). Fresh data are
    the logged texts that received feedback labels in the window and the days before it, de-duplicated and
    split; the replay buffer is a sample of the earlier training split, so the old domain is not forgotten.
    Two blocking checks: the result must beat the live model on held-out fresh data, and must not lose more
    than the margin on the previous test set. A passing model is registered as a task bundle and exported
    by ``candidate_model``.
    """
    retrain = config.retrain()
    _, window_end = day_bounds(context.partition_key)
    upstreams = [stage_store.upstream(context, key) for key in ("feature_drift", "canary_accuracy", "labelled_data", "foundation_model")]
    previous = read_splits(upstreams[2].path)
    parent_version = champion_version(mlflow)
    live_bundle = task_bundle_of(mlflow, parent_version, stage_store.cache_path())
    live_model, tokenizer, live_manifest = load_bundle(live_bundle, _classifier_class(), expected_stage="task")
    live_model.eval()
    recipe = dict(live_manifest.provenance["config"])
    settings = config.fine_tune(recipe)
    start_dir = live_bundle / "model" if config.start_from == "live" else verify_bundle(upstreams[3].path / "bundle").path / "model"

    with prediction_log.open() as log:
        labelled = log.labelled_window(window_end - timedelta(days=config.fresh_days), window_end)
    with_text = labelled[labelled["text"].notna()]
    fresh, duplicates = fresh_dataset(
        list(with_text["text"]), list(with_text["true_label"]), previous.train.schema,
        source=f"prediction log {prediction_log.url}, feedback on traffic {config.fresh_days} days to {window_end.date()}",
    )
    data = build_retrain_data(fresh, duplicates, previous.train, previous.test, retrain)
    output = stage_store.output_dir(context)
    data.splits.write_jsonl(output / "splits")
    trigger = {key: context.run.tags.get(key, "") for key in TRIGGER_TAGS}

    with mlflow.run_for_asset(context) as tracker:
        tracker.set_tags({"tlp.parent_version": parent_version, "tlp.window": context.partition_key,
                          **{k.replace("/", "."): v for k, v in trigger.items() if v}})
        tracker.log_params({f"retrain.{k}": v for k, v in config.model_dump().items()})
        tracker.log_params({f"fine_tune.{k}": v for k, v in settings.to_json().items()})
        log_split_inputs(tracker, data.splits)
        result = fine_tune_classifier(start_dir, tokenizer, data.splits, settings, output / "work", tracker)
        result.model.eval()
        report = ForgettingReport(
            candidate_fresh=result.test_report.accuracy,
            live_fresh=classifier_accuracy(live_model, tokenizer, data.splits.test, settings.max_length, settings.truncation),
            candidate_previous=classifier_accuracy(result.model, tokenizer, previous.test, settings.max_length, settings.truncation),
            live_previous=classifier_accuracy(live_model, tokenizer, previous.test, settings.max_length, settings.truncation),
            fresh_examples=len(data.splits.test), previous_examples=len(previous.test),
            min_fresh_gain_points=retrain.min_fresh_gain_points, max_forgetting_points=retrain.max_forgetting_points,
        )
        tracker.log_metrics({**result.summary(), "fresh_gain_points": report.fresh_gain_points,
                             "previous_change_points": report.previous_change_points,
                             "live_fresh_accuracy": report.live_fresh, "candidate_previous_accuracy": report.candidate_previous,
                             "live_previous_accuracy": report.live_previous})
        checks = raise_if_gates_failed(context, [
            dg.AssetCheckResult(check_name=BEATS_LIVE_CHECK, passed=report.beats_live,
                                metadata={"candidate": report.candidate_fresh, "live": report.live_fresh,
                                          "gain_points": report.fresh_gain_points, "n": report.fresh_examples},
                                description=report.describe_fresh()),
            dg.AssetCheckResult(check_name=FORGETTING_CHECK, passed=report.within_forgetting_margin,
                                metadata={"candidate": report.candidate_previous, "live": report.live_previous,
                                          "change_points": report.previous_change_points, "n": report.previous_examples},
                                description=report.describe_previous()),
        ])
        provenance = capture_provenance(
            stage="task", config=settings.to_json(), seeds={"training": settings.seed, "split": retrain.seed},
            data_hashes={**data.splits.hashes(), "replay": data.replay.content_hash(), "fresh": data.fresh.content_hash()},
            parent_bundle=live_manifest.bundle_sha256,
            extra={"parent_version": parent_version, "window": context.partition_key, "start_from": config.start_from,
                   "best_epoch": result.best_epoch, **{k: v for k, v in trigger.items() if v}},
        )
        manifest = write_bundle(
            output / "bundle", model=result.model, tokenizer=tokenizer, provenance=provenance,
            label_schema=data.splits.train.schema, adapter_dir=result.adapter_dir,
            extra_files={
                "eval_set.jsonl": jsonl_bytes(data.splits.test),
                "reports/test_report.json": json.dumps(result.test_report.to_json(), indent=2).encode(),
                "reports/forgetting.json": json.dumps(report.to_json(), indent=2).encode(),
                "reports/retrain_data.json": json.dumps(data.summary(), indent=2).encode(),
            },
        )
        shutil.rmtree(output / "work", ignore_errors=True)
        version = register_bundle(tracker, manifest, context)
        tracked = tracking_metadata(tracker, version)
        stored = stage_store.save(context, output)
    return dg.MaterializeResult(
        metadata={
            **tracked, **stored, **lineage_metadata(*upstreams), **bundle_metadata(manifest),
            "parent_version": parent_version,
            "start_from": config.start_from,
            "retrain_data": dg.MetadataValue.json(data.summary()),
            "forgetting": dg.MetadataValue.json(report.to_json()),
            "fresh_test_accuracy": report.candidate_fresh,
            "live_fresh_test_accuracy": report.live_fresh,
            "previous_test_accuracy": report.candidate_previous,
            "live_previous_test_accuracy": report.live_previous,
            "labelled_rows_without_text": int(len(labelled) - len(with_text)),
            **{key: value for key, value in trigger.items() if value},
        },
        check_results=checks,
        data_version=content_version(manifest.content_sha256()),
    )


@dg.asset(
    group_name="monitoring",
    kinds={"onnx", "mlflow"},
    partitions_def=MONITOR_PARTITIONS,
    deps=["retrained_model"],
    code_version="2",  # 2: exports with the task bundle's truncation
    pool="training",
    check_specs=export_gate_specs("candidate_model"),
)
def candidate_model(
    context: dg.AssetExecutionContext,
    config: ExportedModelConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The retrained model exported through the same gates as every served model, registered as a ``candidate``.

    Its registry tags carry its lineage: the parent version, the window that triggered it, the drift and
    canary summaries, and the data hashes. It moves no alias; an A/B experiment decides whether it serves.
    """
    retrained = stage_store.upstream(context, "retrained_model")
    task = verify_bundle(retrained.path / "bundle", expected_stage="task")
    splits = read_splits(retrained.path / "splits")
    extra = task.provenance.get("extra", {})
    lineage_tags = {
        "tlp.parent_version": str(extra.get("parent_version", "")),
        "tlp.trigger_window": context.partition_key,
        "tlp.drift_summary": str(extra.get("tlp/drift_summary", ""))[:5000],
        "tlp.canary_summary": str(extra.get("tlp/canary_summary", ""))[:5000],
        "tlp.data_hashes": json.dumps(task.provenance.get("data_hashes", {}), sort_keys=True)[:5000],
    }
    output = stage_store.output_dir(context)
    with mlflow.run_for_asset(context) as tracker:
        tracker.set_tags(lineage_tags)
        export = export_and_register(context, tracker, task, splits, config.to_library(), output / "bundle", lineage_tags)
        stored = stage_store.save(context, output)
    return dg.MaterializeResult(
        metadata={**export.metadata, **stored, **lineage_metadata(retrained),
                  "lineage_tags": dg.MetadataValue.json(lineage_tags)},
        check_results=export.checks,
        data_version=export.data_version,
    )


def _classifier_class() -> type:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification
