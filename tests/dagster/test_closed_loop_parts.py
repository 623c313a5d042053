"""Parts of the main command's driver (closed_loop/) that need Dagster but no model."""

from __future__ import annotations

import os
import signal
import time

import dagster as dg

from closed_loop.runs import STORY_TAG, fail_orphaned_runs, first_failure, interrupted, merge_ops


def test_op_config_merges_field_by_field() -> None:
    plan = {"task_model": {"config": {"method": "lora"}}, "domain_adapted_model": {"config": {"enabled": False}}}
    user = {"task_model": {"config": {"epochs": 3}}, "exported_model": {"config": {"latency_requests": 50}}}
    assert merge_ops(plan, user) == {
        "task_model": {"config": {"method": "lora", "epochs": 3}},
        "domain_adapted_model": {"config": {"enabled": False}},
        "exported_model": {"config": {"latency_requests": 50}},
    }


def test_runs_a_killed_story_left_running_are_failed_and_others_left_alone() -> None:
    instance = dg.DagsterInstance.ephemeral()
    mine = instance.add_run(dg.DagsterRun(job_name="monitor_job", run_id="a" * 36, status=dg.DagsterRunStatus.STARTED,
                                          tags={STORY_TAG: "story-1"}))
    other = instance.add_run(dg.DagsterRun(job_name="main_job", run_id="b" * 36, status=dg.DagsterRunStatus.STARTED,
                                           tags={STORY_TAG: "story-2"}))
    assert fail_orphaned_runs(instance, "story-1") == 1
    assert instance.get_run_by_id(mine.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    assert instance.get_run_by_id(other.run_id).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]
    assert fail_orphaned_runs(instance, "story-1") == 0


def test_a_failed_run_is_told_by_its_step_and_innermost_cause() -> None:
    @dg.asset
    def broken() -> None:
        try:
            raise OSError("disk full at /tmp/x")
        except OSError as err:
            raise RuntimeError("could not save the bundle") from err

    result = dg.materialize([broken], raise_on_error=False)
    assert first_failure(result) == "step broken: OSError: disk full at /tmp/x"


def test_the_old_domain_is_guarded_only_where_its_traffic_remains() -> None:
    from tl_platform.story.scenario import StoryConfig, shortened, story_guardrails

    assert "standard_accuracy" in {g["name"] for g in story_guardrails(StoryConfig())}
    # all-slang days leave nothing to measure it on: pre-registered, it would keep the experiment from ending
    assert "standard_accuracy" not in {g["name"] for g in story_guardrails(shortened())}


def test_the_story_pre_registers_an_experiment_the_asset_accepts() -> None:
    from datetime import date

    from assets.ab_experiment import ExperimentConfig
    from tl_platform.story.scenario import StoryConfig, experiment_config

    config = ExperimentConfig(**experiment_config(StoryConfig(), "2", "story-v2", date(2026, 11, 4)))
    spec = config.spec("story-v2", None)
    assert (spec.min_duration_days, spec.max_duration_days, spec.mde) == (7, 14, 0.05)
    assert spec.routing_salt == "story-7" and spec.slices == ("register", "domain") and config.shadow_days == 1
    assert [g.name for g in spec.guardrails] == ["p99_latency", "error_rate", "standard_accuracy"]


def test_ctrl_c_inside_a_step_is_told_apart_from_a_step_that_failed() -> None:
    @dg.asset
    def long_step() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; Dagster turns it into an interrupted step
        time.sleep(5)

    @dg.asset
    def broken_step() -> None:
        raise RuntimeError("could not save the bundle")

    stopped = dg.materialize([long_step], raise_on_error=False)
    failed = dg.materialize([broken_step], raise_on_error=False)
    assert not stopped.success and interrupted(stopped)
    assert not failed.success and not interrupted(failed)
