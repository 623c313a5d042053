"""The story's steps: the plan, the model stages, the simulated days with their monitors, trigger ticks, retrain
and experiment, and the cost report; each saves the state once it is done, so an interrupted story resumes."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dagster as dg

from closed_loop.runs import STORY_TAG, StepFailed, first_failure, interrupted, job_has_op, merge_ops
from definitions import defs
from resources import (
    AlertRoute,
    DeploymentTarget,
    PredictionLogSource,
    RetrainPolicy,
    StageStore,
    resources_for_environment,
)
from resources.alerts import RecordingAlertRoute
from resources.catalogue import locate
from sensors.retrain_trigger import TRIGGER_SENSOR_NAME, evaluate_trigger, latest_metadata
from sensors.simulated_ticks import RequestedRun, SimulatedTicks
from tl_platform.economics.report import PROPOSAL_CATALOGUE_SPECS, Proposal, load_proposal
from tl_platform.local_state import tlp_home
from tl_platform.monitoring.trigger import TriggerState
from tl_platform.story.progress import Progress, format_duration, training_bars
from tl_platform.story.records import day_record, points_text
from tl_platform.story.scenario import (
    StoryConfig,
    StoryDay,
    experiment_config,
    first_day,
    load_story_data,
    timeline,
    traffic_for,
)
from tl_platform.story.server import ServingProcess, purge_day
from tl_platform.story.state import StoryState, StoryStore


class Story:
    """One story on the local instance: each step runs once, records what it found in the state, and saves it."""

    def __init__(self, config: StoryConfig, state: StoryState, store: StoryStore, progress: Progress,
                 log_path: Path, ops_overrides: dict[str, Any], owner: str) -> None:
        self.config, self.state, self.store, self.progress = config, state, store, progress
        self.log_path, self.ops_overrides, self.owner = log_path, ops_overrides, owner
        self.instance = dg.DagsterInstance.get()
        resources = resources_for_environment()
        self.log_url = cast(PredictionLogSource, resources["prediction_log"]).url
        self.deployment_path = Path(cast(DeploymentTarget, resources["deployment_target"]).path())
        self.webhook_url = cast(AlertRoute, resources["alerts"]).webhook_url
        self.stage_store = cast(StageStore, resources["stage_store"])
        self.home = tlp_home()

    # --- one Dagster run ---------------------------------------------------------------------------------
    def run_job(self, name: str, ops: dict[str, Any] | None = None, partition_key: str | None = None,
                tags: dict[str, str] | None = None, asset_selection: list[str] | None = None,
                run_id: str | None = None) -> str:
        job = defs.resolve_job_def(name)
        selected = set(asset_selection or [])
        wanted_ops = {op: value for op, value in merge_ops(ops or {}, self.ops_overrides).items()
                      if (not selected or op in selected) and job_has_op(job, op)}
        result = job.execute_in_process(
            run_config={"ops": wanted_ops} if wanted_ops else None, instance=self.instance,
            partition_key=partition_key, tags={STORY_TAG: self.state.fingerprint, **(tags or {})},
            asset_selection=[dg.AssetKey(a) for a in asset_selection] if asset_selection else None,
            raise_on_error=False, run_id=run_id,
        )
        if not result.success:
            if interrupted(result):  # Ctrl-C inside a step: Dagster ends the run and returns instead of raising
                raise KeyboardInterrupt
            where = f" for {partition_key}" if partition_key else ""
            raise StepFailed(f"{name} run {result.run_id} failed{where}: {first_failure(result)}\n"
                             f"(its events: `tlp ui` -> Runs, or {self.log_path})")
        return result.run_id

    def save(self) -> None:
        self.store.save(self.state)

    def required_metadata(self, asset: str) -> dict[str, Any]:
        found = latest_metadata(self.instance, asset)
        if found is None:
            raise StepFailed(f"{asset} has no materialisation in the catalogue")
        return found

    @contextmanager
    def timed(self, name: str, detail: str = "") -> Iterator[None]:
        """A stage line with its time; the time is kept in the state (and the report) once the stage succeeds."""
        began = time.monotonic()
        with self.progress.stage(name, detail):
            yield
        self.state.stage_seconds[name] = round(time.monotonic() - began, 1) + self.state.stage_seconds.get(name, 0.0)

    # --- the stages ----------------------------------------------------------------------------------------
    def plan(self) -> None:
        if self.state.plan is not None:
            return
        with self.timed("transfer plan", "labelled data, foundation model, the recipe the data call for"):
            labelled = {"labelled_data": {"config": {"domain": self.config.domain}}}
            self.run_job("plan_job", labelled)
            found = self.required_metadata("transfer_plan")
            self.state.plan = {"recommended": found.get("recommended"), "runner_up": found.get("runner_up"),
                               "run_config": found.get("run_config") or {},
                               "relative_domain_distance": found.get("relative_domain_distance")}
            self.progress.line(f"  plan: {found.get('recommended')} (runner-up: {found.get('runner_up')})")
        self.save()

    def models(self) -> None:
        if self.state.models_run_id is not None:
            return
        assert self.state.plan is not None
        ops = {op: value for op, value in (self.state.plan.get("run_config") or {}).get("ops", {}).items()
               if op in ("domain_adapted_model", "task_model")}
        if self.config.domain_adaptation is not None:
            ops.setdefault("domain_adapted_model", {"config": {}})["config"]["enabled"] = self.config.domain_adaptation
        if self.config.task_epochs is not None:
            ops.setdefault("task_model", {"config": {}})["config"]["epochs"] = self.config.task_epochs
        ops.setdefault("task_model", {"config": {}})["config"].setdefault("seed", self.config.seed)
        adaptation = ops.get("domain_adapted_model", {}).get("config", {}).get("enabled", True)
        detail = f"domain adaptation {'on' if adaptation else 'off'}, {ops['task_model']['config'].get('method', 'lora')}"
        with self.timed("models", detail + ", export with its gates, deployment"), training_bars(self.progress):
            self.state.models_run_id = self.run_job(
                "main_job", ops, asset_selection=["domain_adapted_model", "task_model", "exported_model", "deployment"])
        deployed = self.required_metadata("deployment")
        self.state.champion_version = str(deployed["champion_version"])
        task = self.required_metadata("task_model")
        self.progress.line(f"  task model: test accuracy {float(task['test_accuracy']):.3f}; serving "
                           f"v{self.state.champion_version} as champion")
        self.save()

    def days(self) -> None:
        if not self.state.first_day:  # a state written before dates were kept: its first recorded day
            self.state.first_day = self.state.days[0]["day"] if self.state.days else first_day(
                self.config, datetime.now(UTC).date()).isoformat()
        days = timeline(self.config, date.fromisoformat(self.state.first_day))
        if self.state.days_done >= len(days):
            return
        if self.state.sensor_cursor is None:
            # the trigger is switched on with the deployment: it judges the story's windows, not the days before
            before = (days[0].day - timedelta(days=1)).isoformat()
            self.state.sensor_cursor = json.dumps(TriggerState(last_judged_window=before).to_json(), sort_keys=True)
        data = load_story_data(self.config)
        log_url = self.log_url
        if self.state.replaying is not None:
            removed = purge_day(log_url, days[self.state.replaying].day)
            self.progress.line(f"  resuming: removed {removed} logged requests of the interrupted day "
                               f"{days[self.state.replaying].day}; it is replayed whole")
        deployment_path = self.deployment_path
        with self.timed("simulated days", f"{len(days)} days through the serving API; monitors, trigger, A/B"), \
                ServingProcess(deployment_path, log_url, self.home / "story") as server:
            began = time.monotonic()
            for story_day in days[self.state.days_done:]:
                self.one_day(story_day, data, server, len(days), began)

    def one_day(self, story_day: StoryDay, data: Any, server: "ServingProcess", total: int, began: float) -> None:
        self.state.replaying = story_day.index
        self.save()
        parts = traffic_for(self.config, data, story_day)
        requests = sum(len(part.texts) for part in parts)
        calls = [len(part.texts) + round(len(part.texts) * part.feedback_share) for part in parts]
        label = f"day {story_day.index + 1}/{total} {story_day.day} {story_day.weekday}"
        day_began = time.monotonic()
        outcomes = []
        for i, part in enumerate(parts):
            offset = sum(calls[:i])

            def on_progress(done: int, _: int, offset: int = offset) -> None:
                self.progress.bar(label, offset + done, sum(calls), day_began, note=f"{story_day.phase} traffic")

            outcomes.append(server.replay(part, self.config.seed * 7919 + story_day.index * 31 + i,
                                          self.config.concurrency, on_progress))
        window = story_day.day.isoformat()
        self.run_job("monitor_job", partition_key=window)
        alerts, requested = self.tick(story_day)
        retrained = self.retrain(requested) if requested else None
        decision = self.experiment_step(story_day, server)
        record = day_record(story_day, outcomes, latest_metadata(self.instance, "feature_drift", window),
                            latest_metadata(self.instance, "canary_accuracy", window), alerts, retrained, decision,
                            server.versions())
        self.state.days.append(record)
        self.state.replaying = None
        self.save()
        self.progress.line(f"  {label} {story_day.phase:<8} {requests:>5} requests  {record['line']}  "
                           f"({format_duration(time.monotonic() - day_began)}; "
                           f"{format_duration(time.monotonic() - began)} of days so far)")

    def tick(self, story_day: StoryDay) -> tuple[list[str], list[RequestedRun]]:
        """The trigger at the moment the daemon would first judge this window (its end plus the lateness),
        recorded as a tick of the sensor in the instance, as the daemon would record it."""
        policy = RetrainPolicy(cooldown_hours=self.config.cooldown_hours)
        now = datetime.combine(story_day.day + timedelta(days=1), datetime.min.time(), UTC) + \
            timedelta(hours=policy.lateness_hours, minutes=1)
        context = dg.build_sensor_context(instance=self.instance, cursor=self.state.sensor_cursor)
        alerts = RecordingAlertRoute(webhook_url=self.webhook_url)
        ticks = SimulatedTicks(self.instance, TRIGGER_SENSOR_NAME)
        done = self.state.retrain
        runs_done = {str(done["run_key"]): str(done["run_id"])} if done and done.get("run_key") else None
        tick = ticks.evaluate(now, context, lambda: evaluate_trigger(context, policy, alerts, now), runs_done)
        self.state.sensor_cursor = tick.cursor
        return alerts.sent, tick.runs

    def retrain(self, requested: list[RequestedRun]) -> dict[str, Any]:
        run = requested[0]
        window = str(run.request.partition_key)
        if self.state.retrain is not None and self.state.retrain.get("window") == window:
            return self.state.retrain  # done before an interruption: never twice
        ops = {"retrained_model": {"config": {"fresh_days": 1, "max_forgetting_points": 2.0}}}
        with self.timed("retrain", f"drift and a canary breach in window {window}: fresh feedback plus replay"), \
                training_bars(self.progress):
            run_id = self.run_job("retrain_job", ops, partition_key=window, tags=run.tags, run_id=run.run_id)
        forgetting = (latest_metadata(self.instance, "retrained_model", window) or {}).get("forgetting") or {}
        candidate = str((latest_metadata(self.instance, "candidate_model", window) or {}).get("registered_version"))
        self.state.retrain = {"window": window, "run_id": run_id, "run_key": str(run.request.run_key),
                              "candidate_version": candidate,
                              "forgetting": forgetting, "reasons": run.request.tags.get("tlp/trigger_reasons", "")}
        self.save()
        self.progress.line(f"  candidate v{candidate}: {points_text(forgetting.get('fresh_gain_points'))} on the window's "
                           f"held-out rows, {points_text(forgetting.get('previous_change_points'))} on the old test set")
        return self.state.retrain

    def experiment_step(self, story_day: StoryDay, server: "ServingProcess") -> dict[str, Any] | None:
        """Start the experiment the day after a candidate exists; decide each day once it runs."""
        retrain, experiment = self.state.retrain, self.state.experiment
        if retrain is None:
            return None
        if experiment is None:
            start = story_day.day + timedelta(days=1)
            experiment_id = f"story-{self.state.fingerprint[:6]}-v{retrain['candidate_version']}"
            config = experiment_config(self.config, retrain["candidate_version"], experiment_id, start)
            self.run_job("ab_start_job", {"ab_experiment": {"config": config}})
            self.state.experiment = {"id": experiment_id, "start_day": start.isoformat(),
                                     "candidate_version": retrain["candidate_version"], "verdict": None}
            self.save()
            server.wait_for_record()
            self.progress.line(f"  experiment {experiment_id} starts {start}: "
                               f"{self.config.shadow_days} shadow day(s), then half the users on the candidate")
            return None
        if experiment.get("verdict") not in (None, "keep_running", "shadow") or story_day.day < date.fromisoformat(
                experiment["start_day"]):
            return None
        self.run_job("ab_decision_job", partition_key=story_day.day.isoformat())
        decided = latest_metadata(self.instance, "ab_decision", story_day.day.isoformat()) or {}
        experiment.update({"verdict": decided.get("verdict"), "summary": decided.get("summary"),
                           "reasons": decided.get("reasons"), "decided_day": story_day.day.isoformat()})
        self.save()
        server.wait_for_record()  # the shadow's last day starts the split; a final verdict moves traffic
        if decided.get("verdict") in ("ship", "roll_back", "invalid"):
            self.progress.line(f"  A/B decision: {str(decided.get('summary'))[:400]}")
        return decided

    def proposal(self) -> None:
        if self.state.proposal_run_id is not None:
            return
        with self.timed("cost report and ROI", "from this story's measured runs"):
            # the cost report prices the newest run of each stage: this story's plan and model runs
            ops = {"roi_curve": {"config": {"monitoring_owner": self.owner}}}
            self.state.proposal_run_id = self.run_job("proposal_job", ops)
        self.save()

    def load_proposal(self) -> Proposal:
        located = locate(self.instance, self.stage_store, PROPOSAL_CATALOGUE_SPECS)
        return load_proposal(*(Path(located[spec]) for spec in PROPOSAL_CATALOGUE_SPECS))


