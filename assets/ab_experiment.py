"""Starting an A/B experiment: the pre-registered spec recorded, the candidate made challenger, the split served."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

from datetime import UTC, date, datetime

import dagster as dg
from pydantic import Field

from assets.ab_records import experiment_record, running_experiments, write_spec
from assets.exported_model import SERVING_MODEL_NAME
from assets.serving_state import write_split
from assets.stage_records import content_version
from resources.deployment_target import DeploymentTarget
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore
from tl_platform.experiments.ab_spec import ExperimentSpec, Guardrail, PrimaryMetric, compare_specs
from tl_platform.experiments.promotion import CANDIDATE, STATUS_TAG, promote
from tl_platform.tracking.mlflow_tracker import MlflowRegistry, RegisteredVersion, version_by_alias, version_by_tag


class GuardrailConfig(dg.Config):
    name: str
    metric: str = Field(description="p99_latency_ms, error_rate, cost_per_1k_requests, accuracy, outcome, or your own")
    limit: float
    direction: str = Field(description="which way is better: higher or lower")
    comparison: str = Field(default="absolute", description="absolute (the challenger's value) or vs_champion (the difference)")
    slice: dict[str, str] | None = Field(default=None, description="only rows whose attributes match, e.g. {domain: yelp}")

    def guardrail(self) -> Guardrail:
        return Guardrail(self.name, self.metric, self.limit, self.direction, self.comparison,  # type: ignore[arg-type]
                         dict(self.slice) if self.slice else None)


DEFAULT_GUARDRAILS = [
    GuardrailConfig(name="p99_latency", metric="p99_latency_ms", limit=50.0, direction="lower", comparison="vs_champion"),
    GuardrailConfig(name="error_rate", metric="error_rate", limit=0.01, direction="lower"),
]


class ExperimentConfig(dg.Config):
    """The experiment as pre-registered; every field is fixed once the experiment starts."""

    candidate_version: str = Field(default="", description="the version to test; when empty, the running experiment's "
                                                            "challenger, else the newest candidate")
    experiment_id: str = Field(default="", description="ab-v<candidate> when empty")
    start_day: str = Field(default="", description="first UTC day of the experiment (YYYY-MM-DD); today when empty")
    metric: str = Field(default="accuracy", description="the primary metric's name")
    metric_kind: str = Field(default="proportion", description="proportion (per-unit accuracy on feedback labels) or mean (the feedback outcome)")
    direction: str = Field(default="higher", description="which way is better: higher or lower")
    baseline: float | None = Field(default=0.85, description="the champion's expected per-unit accuracy (proportion), for the power calculation")
    baseline_std: float | None = Field(default=None, description="the per-unit standard deviation of the outcome (mean)")
    mde: float = Field(default=0.03, description="minimum detectable effect, absolute (0.03 = three accuracy points)")
    alpha: float = 0.05
    power: float = 0.8
    guardrails: list[GuardrailConfig] = Field(default_factory=lambda: list(DEFAULT_GUARDRAILS))
    slices: list[str] = Field(default_factory=list, description="attribute keys whose values are checked as slices")
    min_duration_days: int = Field(default=7, description="one full business cycle")
    max_duration_days: int = 28
    challenger_share: float = 0.5
    holdout_share: float = Field(default=0.05, description="share of units kept on the old model after a ship")
    routing_salt: str = Field(default="", description="hashed with unit ids; a fresh random salt when empty")
    shadow_days: int = Field(default=0, description="days the challenger first scores every request silently, "
                                                    "before the split (0: split at once)")

    def spec(self, experiment_id: str, stored: ExperimentSpec | None) -> ExperimentSpec:
        primary = PrimaryMetric(self.metric, self.metric_kind, self.direction, self.baseline, self.baseline_std)  # type: ignore[arg-type]
        # a stored experiment keeps the salt it was started with unless this config names one
        salt = self.routing_salt or (stored.routing_salt if stored is not None else "")
        return ExperimentSpec(
            experiment_id=experiment_id, primary=primary, mde=self.mde, alpha=self.alpha, power=self.power,
            guardrails=tuple(g.guardrail() for g in self.guardrails), slices=tuple(self.slices),
            min_duration_days=self.min_duration_days, max_duration_days=self.max_duration_days,
            challenger_share=self.challenger_share, holdout_share=self.holdout_share, routing_salt=salt,
        )


def _candidate(mlflow: MlflowTracking, wanted: str) -> RegisteredVersion:
    """The named version; else the running experiment's challenger (materialising again continues it); else the
    newest candidate."""
    settings = mlflow.settings()
    running = running_experiments(mlflow)
    if not wanted and running:
        wanted = running[0].challenger_version
    if wanted:
        tags = MlflowRegistry(settings).version_tags(SERVING_MODEL_NAME, wanted)
        if tags is None:
            raise ValueError(f"ab_experiment.candidate_version: {SERVING_MODEL_NAME} has no version {wanted!r}")
        return RegisteredVersion(SERVING_MODEL_NAME, wanted, "", tags)
    found = version_by_tag(settings, SERVING_MODEL_NAME, STATUS_TAG, CANDIDATE)
    if found is None:
        raise ValueError(f"{SERVING_MODEL_NAME} has no version tagged {STATUS_TAG}={CANDIDATE}: materialise "
                         "candidate_model (a retrain) or exported_model first, or name candidate_version")
    return found


@dg.asset(group_name="experiments", kinds={"mlflow"}, deps=["candidate_model"], code_version="1", pool="model_registry")
def ab_experiment(
    context: dg.AssetExecutionContext,
    config: ExperimentConfig,
    mlflow: MlflowTracking,
    stage_store: StageStore,
    deployment_target: DeploymentTarget,
) -> dg.MaterializeResult:
    """Start an A/B experiment of a candidate against the champion, pre-registered.

    The spec (primary metric and MDE, alpha and power hence the sample size, guardrails, slices, duration,
    split, holdout, a fresh routing salt) is recorded in MLflow before any traffic moves; materialising again
    with a changed spec is refused, naming what changed. Then the candidate becomes the ``challenger`` alias
    and the deployment record splits units by the experiment's salt. ``ab_decision`` judges it daily.
    """
    with mlflow.retry_when_unavailable():
        candidate = _candidate(mlflow, config.candidate_version)
        champion = version_by_alias(mlflow.settings(), SERVING_MODEL_NAME, "champion")
    if champion is None:
        raise ValueError(f"{SERVING_MODEL_NAME} has no champion: nothing serves yet; materialise deployment first")
    experiment_id = config.experiment_id or f"ab-v{candidate.version}"
    stored = experiment_record(mlflow, experiment_id)
    spec = config.spec(experiment_id, stored.spec if stored is not None else None)
    if stored is not None:
        compare_specs(stored.spec, spec)  # raises SpecChangedError naming each changed field
        if stored.shadow_days != config.shadow_days:
            raise ValueError(f"experiment {experiment_id} was pre-registered with shadow_days={stored.shadow_days}; "
                             f"changing it to {config.shadow_days} after the start is refused")
        if not stored.running:
            raise ValueError(f"experiment {experiment_id} already ended ({stored.status} on {stored.decided_on}); "
                             "start a new one with another experiment_id")
    others = [r.spec.experiment_id for r in running_experiments(mlflow) if r.spec.experiment_id != experiment_id]
    if others:
        raise ValueError(f"experiment {others[0]} is still running; one experiment at a time (wait for its "
                         f"ab_decision, or end it) before starting {experiment_id}")
    if not 0 <= config.shadow_days <= 28:
        raise ValueError(f"ab_experiment.shadow_days must be in [0, 28], got {config.shadow_days}")
    if candidate.version == champion.version:
        raise ValueError(f"v{candidate.version} is already the champion; an experiment needs another version")
    start_day = date.fromisoformat(config.start_day) if config.start_day else datetime.now(UTC).date()
    if stored is not None:
        start_day = stored.start_day

    actor = f"dagster run {context.run_id}"
    output = stage_store.output_dir(context)
    with mlflow.run_for_asset(context) as tracker:
        if stored is None:
            write_spec(tracker, spec, champion.version, candidate.version, start_day, config.shadow_days, output)
        run_id = stored.run_id if stored is not None else tracker.run_id
        with mlflow.retry_when_unavailable():
            promotion = promote(MlflowRegistry(mlflow.settings()), SERVING_MODEL_NAME, candidate.version, "challenger",
                                f"A/B experiment {experiment_id}: {spec.power_summary()}", actor)
    in_shadow = config.shadow_days > 0 and not (stored is not None and "tlp.ab.split_started" in stored.tags)
    with mlflow.retry_when_unavailable():
        path = write_split(deployment_target, MlflowRegistry(mlflow.settings()), champion, candidate, spec,
                           shadow=in_shadow)
    size = spec.sample_size()
    phase = (f"in shadow for {config.shadow_days} days, then on {spec.challenger_share:.0%} of units"
             if config.shadow_days else f"on {spec.challenger_share:.0%} of units")
    context.log.info(f"experiment {experiment_id} running from {start_day}: v{candidate.version} challenges "
                     f"v{champion.version} {phase}; {spec.power_summary()}")
    return dg.MaterializeResult(
        metadata={
            "experiment_id": experiment_id,
            "mlflow_run_id": run_id,
            "champion_version": champion.version,
            "challenger_version": candidate.version,
            "start_day": start_day.isoformat(),
            "phase": phase,
            "power_calculation": dg.MetadataValue.md(spec.power_summary()),
            "required_units": dg.MetadataValue.json({"champion": size.champion, "challenger": size.challenger}),
            "spec": dg.MetadataValue.json(spec.to_json()),
            "spec_sha256": spec.digest(),
            "challenger_promotion": dg.MetadataValue.json(promotion.to_json()),
            "record": dg.MetadataValue.path(str(path)),
        },
        data_version=content_version(spec.canonical_json(), candidate.version, champion.version),
    )
