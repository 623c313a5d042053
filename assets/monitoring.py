"""The daily monitor: feature drift of the live model's traffic against its own reference, and its labelled canary."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.live_model import champion_version, exported_bundle_of
from assets.monitoring_partitions import MONITOR_PARTITIONS, day_bounds
from assets.stage_records import content_version, png_markdown
from resources.mlflow_tracking import MlflowTracking
from resources.prediction_log import PredictionLogSource
from resources.stage_store import StageStore
from tl_platform.data import DatasetSource, LabelSchema, load_labelled_text
from tl_platform.export.monitoring_reference import load_reference
from tl_platform.export.precision import recorded_precision
from tl_platform.monitoring.canary import CanaryConfig, score_canary, window_bounds
from tl_platform.monitoring.canary_file import SOURCE_KEY, score_labelled_file
from tl_platform.monitoring.drift import DriftThresholds, detect_drift
from tl_platform.monitoring.evidently_report import write_evidently_report
from tl_platform.monitoring.plots import CanaryPoint, plot_canary_history, plot_drift_history
from tl_platform.monitoring.window import read_window, served_versions
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.model import load_variant

DRIFT_CHECK = "features_within_drift_thresholds"
CANARY_CHECK = "canary_meets_slo"

prediction_log = dg.AssetSpec(
    "prediction_log",
    deps=["deployment"],
    group_name="serving",
    kinds={"sqlite", "postgres"},
    description=(
        "Every answered request of the serving API: text (with retention), monitoring features, variant, "
        "experiment and routing salt, and the feedback joined to it. Written by the servers, read by monitoring."
    ),
)

# Daily, once the day is over; drift needs only the day's traffic. The canary re-runs its recent windows every
# day so that feedback arriving late is counted (the lateness window), then leaves them be.
DRIFT_AUTOMATION = dg.AutomationCondition.on_cron("15 0 * * *").ignore(dg.AssetSelection.assets("prediction_log"))
CANARY_AUTOMATION = (
    dg.AutomationCondition.cron_tick_passed("45 0 * * *")
    & dg.AutomationCondition.in_latest_time_window(timedelta(days=3))
    & ~dg.AutomationCondition.in_progress()
)


class FeatureDriftConfig(dg.Config):
    """Thresholds of this service (``DriftThresholds`` validates them) and what the asset shows."""

    thresholds: dict[str, Any] = Field(default={}, description="DriftThresholds fields, e.g. {'kl': 0.15}")
    feature_thresholds: dict[str, float] = Field(default={}, description="per-feature threshold of its deciding score")
    history_days: int = Field(default=30, description="days of earlier results in the plot")
    evidently_report: bool = Field(default=True, description="attach Evidently's HTML report of the window (MLflow)")
    evidently_max_rows: int = Field(default=5000, description="rows of the window sampled into the Evidently report")


@dg.asset(
    group_name="monitoring",
    kinds={"python", "mlflow"},
    partitions_def=MONITOR_PARTITIONS,
    deps=[prediction_log],
    code_version="1",
    automation_condition=DRIFT_AUTOMATION,
    check_specs=[dg.AssetCheckSpec(DRIFT_CHECK, asset="feature_drift",
                                   description="no monitored feature drifted past its threshold (a warning, not a gate)")],
)
def feature_drift(
    context: dg.AssetExecutionContext,
    config: FeatureDriftConfig,
    prediction_log: PredictionLogSource,
    mlflow: MlflowTracking,
    stage_store: StageStore,
) -> dg.MaterializeResult:
    """How far one day of the live model's traffic moved from what the model was built for.

    Every monitored feature (text length, tokens, unknown-token share, confidence, predicted class, the
    embedding projection) is compared with the reference stored in the model's own bundle: PSI and KL on
    binned counts, Kolmogorov-Smirnov or chi-squared and Jensen-Shannon, and MMD on the projection. The
    result names the features that drifted and by how much; a plot shows each feature over recent days, and
    Evidently's report of the same window is attached in MLflow for browsing. Judged for the version that
    served most of the day as champion.
    """
    start, end = day_bounds(context.partition_key)
    thresholds = DriftThresholds.from_config(config.thresholds, config.feature_thresholds)
    output = stage_store.output_dir(context)
    with prediction_log.open() as log:
        served = served_versions(log, start, end)
        version = max(served, key=lambda v: served[v]) if served else champion_version(mlflow)
        profile = load_reference(exported_bundle_of(mlflow, version))
        window = read_window(log, version, start, end, profile.numeric_features, profile.categorical_features,
                             seed=_seed(context.partition_key))
    result = detect_drift(profile, window, thresholds, seed=_seed(context.partition_key))
    (output / "drift.json").write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    history = _recent_scores(context, config.history_days)
    history[context.partition_key] = result.deciding_scores()
    picture = plot_drift_history(history, result.deciding_thresholds(), output / "drift_history.png",
                                 title=f"feature drift of v{version}, score / threshold, to {context.partition_key}")
    metadata: dict[str, Any] = {}
    with mlflow.run_for_asset(context) as tracker:
        tracker.set_tags({"tlp.window": context.partition_key, "tlp.model_version": version, "tlp.drift_status": result.status})
        tracker.log_metrics({f"drift.{name}": score for name, score in result.deciding_scores().items()})
        tracker.log_artifact(output / "drift.json")
        tracker.log_artifact(picture)
        if config.evidently_report and result.rows:
            report = write_evidently_report(profile.sample_frame(), window.frame(), output / "evidently_drift_report.html",
                                            max_rows=config.evidently_max_rows, thresholds=thresholds)
            tracker.log_artifact(report, "evidently")
            metadata["evidently_report"] = dg.MetadataValue.url(f"{tracker.ui_url}/artifacts/evidently/{report.name}") \
                if tracker.ui_url else dg.MetadataValue.path(str(report))
        metadata["mlflow_run_id"] = tracker.run_id
        stored = stage_store.save(context, output)
    return dg.MaterializeResult(
        metadata={
            **metadata, **stored,
            "model_version": version,
            "rows": result.rows,
            "rows_read": window.rows_read,
            "served_versions": dg.MetadataValue.json(served),
            "drift_status": result.status,
            "drifted": result.drifted,
            "drifted_features": dg.MetadataValue.json(list(result.drifted_features)),
            "summary": result.summary(),
            "scores": dg.MetadataValue.json(result.deciding_scores()),
            "thresholds": dg.MetadataValue.json(result.deciding_thresholds()),
            "features": dg.MetadataValue.md(result.markdown_table()),
            "drift_history": png_markdown(picture, "drift per feature over recent days"),
        },
        check_results=[dg.AssetCheckResult(
            check_name=DRIFT_CHECK, passed=not result.drifted, severity=dg.AssetCheckSeverity.WARN,
            description=result.summary(),
            metadata={"drifted_features": dg.MetadataValue.json(list(result.drifted_features)), "rows": result.rows},
        )],
        data_version=content_version(json.dumps(result.to_json(), sort_keys=True)),
    )


class CanaryAccuracyConfig(dg.Config):
    """The service's SLO and the canary window (``CanaryConfig`` validates them)."""

    slo: float = Field(default=0.85, description="the accuracy the service promises")
    window_days: int = Field(default=1, description="1 (the day) or 7 (the week ending with the day)")
    lateness_hours: float = Field(default=48.0, description="a window is complete this long after it ends")
    min_labels: int = Field(default=100, description="fewer labels: the result says so instead of an accuracy")
    min_slice_labels: int = Field(default=30, description="fewer labels in a slice: that slice says so")
    slice_keys: list[str] = Field(default=[], description="request attributes to slice by, e.g. ['domain', 'device']")
    labelled_file: str | None = Field(default=None, description="optional labelled CSV/JSONL refreshed weekly, scored by the live model")
    history_days: int = 30

    def library(self) -> CanaryConfig:
        return CanaryConfig(slo=self.slo, window_days=self.window_days, lateness_hours=self.lateness_hours,
                            min_labels=self.min_labels, min_slice_labels=self.min_slice_labels)


@dg.asset(
    group_name="monitoring",
    kinds={"python"},
    partitions_def=MONITOR_PARTITIONS,
    deps=[prediction_log],
    code_version="1",
    automation_condition=CANARY_AUTOMATION,
    check_specs=[dg.AssetCheckSpec(CANARY_CHECK, asset="canary_accuracy",
                                   description="labelled canary accuracy is not confidently below the SLO (a warning)")],
)
def canary_accuracy(
    context: dg.AssetExecutionContext,
    config: CanaryAccuracyConfig,
    prediction_log: PredictionLogSource,
    mlflow: MlflowTracking,
    stage_store: StageStore,
) -> dg.MaterializeResult:
    """Accuracy of the served answers that received feedback labels in the window, against the service's SLO.

    Each answer is scored as the model that served it answered, with a Wilson confidence interval; a breach
    means the interval lies wholly below the SLO. Rows that carry slice attributes are scored per slice too.
    Too few labels gives a result that says so, never a number that looks like one. A window is complete
    once the configured lateness has passed; re-materialising it later counts the labels that came late.
    With ``labelled_file`` set, that file is scored by the window's live model and joins the canary as the
    slice ``source=labelled_file``.
    """
    settings = config.library()
    start, end = window_bounds(datetime.strptime(context.partition_key, "%Y-%m-%d").date(), settings.window_days)
    with prediction_log.open() as log:
        labelled = log.labelled_window(start, end)
        served = served_versions(log, start, end)
    slice_keys = tuple(config.slice_keys)
    if config.labelled_file:
        live = max(served, key=lambda v: served[v]) if served else champion_version(mlflow)
        bundle = exported_bundle_of(mlflow, live)  # scored as it serves: INT8, or FP32 where INT8 failed its gate
        model = load_variant(VariantSpec(version=live, bundle=bundle, precision=recorded_precision(bundle)))
        schema = LabelSchema(labels=model.labels, names=model.label_names)
        dataset = load_labelled_text(DatasetSource(path=config.labelled_file, schema=schema))
        labelled = pd.concat([labelled, score_labelled_file(model, dataset, start)], ignore_index=True)
        slice_keys = (*slice_keys, SOURCE_KEY) if SOURCE_KEY not in slice_keys else slice_keys
    result = score_canary(labelled, start, end, datetime.now(UTC), settings, slice_keys=slice_keys)
    output = stage_store.output_dir(context)
    (output / "canary.json").write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    points = _recent_canary(context, config.history_days)
    points.append(CanaryPoint(context.partition_key, result.accuracy, result.ci_low, result.ci_high, result.n_labelled))
    picture = plot_canary_history(points, settings.slo, output / "canary_history.png",
                                  title=f"canary accuracy ({settings.window_days}-day window) against the SLO")
    stored = stage_store.save(context, output)
    return dg.MaterializeResult(
        metadata={
            **stored,
            "canary_status": result.status,
            "complete": result.complete,
            "accuracy": result.accuracy if result.accuracy is not None else "too few labels",
            "ci_low": result.ci_low if result.ci_low is not None else "too few labels",
            "ci_high": result.ci_high if result.ci_high is not None else "too few labels",
            "n_labelled": result.n_labelled,
            "slo": settings.slo,
            "summary": result.message,
            "model_versions": dg.MetadataValue.json(sorted(set(labelled["model_version"])) if len(labelled) else []),
            "slices": dg.MetadataValue.md(_slice_table(result)),
            "canary_history": png_markdown(picture, "canary accuracy against the SLO"),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CANARY_CHECK, passed=result.status != "breach", severity=dg.AssetCheckSeverity.WARN,
            description=result.message, metadata={"n_labelled": result.n_labelled, "status": result.status},
        )],
        data_version=content_version(json.dumps(result.to_json(), sort_keys=True)),
    )


def _seed(partition_key: str) -> int:
    """A seed fixed by the window, so re-materialising a window gives the same permutation p-values."""
    return int(partition_key.replace("-", ""))


def _recent_metadata(context: dg.AssetExecutionContext, days: int) -> dict[str, dict[str, Any]]:
    """The newest materialisation metadata of this asset for each of the ``days`` windows before this one."""
    this = datetime.strptime(context.partition_key, "%Y-%m-%d").date()
    keys = [(this - timedelta(days=i)).isoformat() for i in range(days, 0, -1)]
    found: dict[str, dict[str, Any]] = {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=keys), limit=days * 4
    ).records
    for record in records:  # newest first: keep the first seen per window
        materialisation = record.asset_materialization
        if materialisation is not None and materialisation.partition not in found and materialisation.partition:
            found[materialisation.partition] = {k: v.value for k, v in materialisation.metadata.items()}
    return found


def _recent_scores(context: dg.AssetExecutionContext, days: int) -> dict[str, dict[str, float]]:
    return {window: dict(meta["scores"]) for window, meta in _recent_metadata(context, days).items() if "scores" in meta}


def _recent_canary(context: dg.AssetExecutionContext, days: int) -> list[CanaryPoint]:
    def number(value: object) -> float | None:
        return float(value) if isinstance(value, int | float) else None

    return [
        CanaryPoint(window, number(meta.get("accuracy")), number(meta.get("ci_low")), number(meta.get("ci_high")),
                    int(meta.get("n_labelled", 0)))
        for window, meta in sorted(_recent_metadata(context, days).items())
    ]


def _slice_table(result: Any) -> str:
    if not result.slices:
        return "no slices configured, or no labelled row carried one"
    lines = ["| slice | labels | accuracy | 95% CI | status |", "| --- | --- | --- | --- | --- |"]
    for item in result.slices:
        accuracy = f"{item.accuracy:.3f}" if item.accuracy is not None else "too few labels"
        interval = f"[{item.ci_low:.3f}, {item.ci_high:.3f}]" if item.ci_low is not None else "-"
        lines.append(f"| {item.name} | {item.n_labelled} | {accuracy} | {interval} | {item.status} |")
    return "\n".join(lines)
