"""An A/B experiment's record in MLflow: one run holds the pre-registered spec, the status and the daily verdicts.

The spec is written once, as canonical JSON in a tag (and as an artifact to browse) before any traffic is
split; its SHA-256 is a tag too, so a changed spec cannot pass for the stored one. Status moves from running to
shipped, rolled_back or invalid exactly once, with the day it was decided.
"""

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from resources.mlflow_tracking import MlflowTracking
from tl_platform.experiments.ab_spec import ExperimentSpec
from tl_platform.tracking.mlflow_tracker import MlflowRunTracker, runs_with_tag, set_run_tags

EXPERIMENT_TAG = "tlp.ab.experiment_id"
STATUS_TAG = "tlp.ab.status"
SPEC_TAG = "tlp.ab.spec"
SPEC_DIGEST_TAG = "tlp.ab.spec_sha256"
RUNNING = "running"
FINAL_STATUSES = ("shipped", "rolled_back", "invalid")


@dataclass(frozen=True)
class ExperimentRecord:
    run_id: str
    spec: ExperimentSpec
    status: str
    champion_version: str
    challenger_version: str
    start_day: date
    decided_on: date | None
    tags: dict[str, str]
    shadow_days: int = 0

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def split_day(self) -> date:
        """The first day of the split: the shadow phase, if any, comes before it."""
        return self.start_day + timedelta(days=self.shadow_days)

    def verdict_on(self, day: date) -> str | None:
        return self.tags.get(f"tlp.ab.verdict.{day.isoformat()}")


def _record(run: dict[str, object]) -> ExperimentRecord:
    tags = dict(run["tags"])  # type: ignore[call-overload]
    spec = ExperimentSpec.from_json(tags[SPEC_TAG])
    if spec.digest() != tags[SPEC_DIGEST_TAG]:
        raise ValueError(f"experiment {tags[EXPERIMENT_TAG]}: the stored spec's SHA-256 {spec.digest()} differs from "
                         f"the one recorded at its start, {tags[SPEC_DIGEST_TAG]}; the record was edited")
    decided = tags.get("tlp.ab.decided_on")
    return ExperimentRecord(
        run_id=str(run["run_id"]), spec=spec, status=tags[STATUS_TAG], champion_version=tags["tlp.ab.champion_version"],
        challenger_version=tags["tlp.ab.challenger_version"], start_day=date.fromisoformat(tags["tlp.ab.start_day"]),
        decided_on=date.fromisoformat(decided) if decided else None, tags=tags,
        shadow_days=int(tags.get("tlp.ab.shadow_days", "0")),
    )


def experiment_record(mlflow: MlflowTracking, experiment_id: str) -> ExperimentRecord | None:
    with mlflow.retry_when_unavailable():
        runs = [run for run in runs_with_tag(mlflow.settings(), EXPERIMENT_TAG, experiment_id)
                if SPEC_TAG in run["tags"]]  # type: ignore[operator]
    return _record(runs[0]) if runs else None


def running_experiments(mlflow: MlflowTracking) -> list[ExperimentRecord]:
    with mlflow.retry_when_unavailable():
        runs = runs_with_tag(mlflow.settings(), STATUS_TAG, RUNNING)
    return [_record(run) for run in runs if SPEC_TAG in run["tags"]]  # type: ignore[operator]


def experiment_for_day(mlflow: MlflowTracking, day: date) -> ExperimentRecord | None:
    """The experiment a day's decision belongs to: the running one, else the newest that was running that day."""
    running = running_experiments(mlflow)
    if running:
        return running[0]
    with mlflow.retry_when_unavailable():
        ended = [_record(run) for status in FINAL_STATUSES
                 for run in runs_with_tag(mlflow.settings(), STATUS_TAG, status) if SPEC_TAG in run["tags"]]  # type: ignore[operator]
    during = [r for r in ended if r.start_day <= day and (r.decided_on is None or day <= r.decided_on)]
    return max(during, key=lambda r: r.start_day) if during else None


def write_spec(tracker: MlflowRunTracker, spec: ExperimentSpec, champion: str, challenger: str, start_day: date,
               shadow_days: int, directory: Path) -> None:
    """Record the spec before traffic is split: canonical JSON and digest as tags, the spec as an artifact."""
    path = directory / "experiment_spec.json"
    path.write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))
    tracker.set_tags({
        EXPERIMENT_TAG: spec.experiment_id, SPEC_TAG: spec.canonical_json(), SPEC_DIGEST_TAG: spec.digest(),
        STATUS_TAG: RUNNING, "tlp.ab.champion_version": champion, "tlp.ab.challenger_version": challenger,
        "tlp.ab.start_day": start_day.isoformat(), "tlp.ab.shadow_days": str(shadow_days),
    })
    tracker.log_artifact(path)


def record_verdict(mlflow: MlflowTracking, record: ExperimentRecord, day: date, verdict: str) -> None:
    """The day's verdict on the experiment's run; a final one also ends the experiment, once."""
    tags = {f"tlp.ab.verdict.{day.isoformat()}": verdict}
    if verdict in ("ship", "roll_back", "invalid"):
        tags.update({STATUS_TAG: {"ship": "shipped", "roll_back": "rolled_back"}.get(verdict, verdict),
                     "tlp.ab.decided_on": day.isoformat()})
    with mlflow.retry_when_unavailable():
        set_run_tags(mlflow.settings(), record.run_id, tags)
