"""The story's Dagster runs: executed in process in the local instance, their failures told in a sentence."""

from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

STORY_TAG = "tlp/story"


class StepFailed(RuntimeError):
    """A Dagster run of the story failed; the message names the run and where its events are."""


def first_failure(result: dg.ExecuteInProcessResult) -> str:
    """The failed step and the innermost cause of its error, the sentence a person acts on."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            message = error.message.strip() if error is not None else "no error recorded"
            return f"step {event.step_key}: {message[:800]}"
    return "no step failed; the run itself did (see its events)"


def interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run failed because it was interrupted (Ctrl-C), not because a step went wrong."""
    return any(event.is_step_failure and event.step_failure_data is not None
               and event.step_failure_data.error is not None
               and event.step_failure_data.error.cls_name == DagsterExecutionInterruptedError.__name__
               for event in result.all_events)


def merge_ops(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Op config of ``override`` over ``base``, field by field (an op named in both keeps the fields of both)."""
    merged = {op: {"config": dict((value or {}).get("config", {}))} for op, value in base.items()}
    for op, value in override.items():
        merged.setdefault(op, {"config": {}})["config"].update((value or {}).get("config", {}))
    return merged


def job_has_op(job: dg.JobDefinition, op: str) -> bool:
    return any(node.name == op for node in job.graph.nodes)


def fail_orphaned_runs(instance: dg.DagsterInstance, story: str) -> int:
    """Runs of this story left STARTED by a killed process: marked failed, their concurrency slots freed."""
    active = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    orphans = instance.get_runs(dg.RunsFilter(tags={STORY_TAG: story}, statuses=active))
    for run in orphans:
        instance.report_run_failed(run)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return len(orphans)


