"""Ticks of a sensor evaluated outside the daemon, recorded where the daemon records its own.

The main command's story evaluates the retrain trigger once per simulated day: the daemon's sensor code, at the
moment the daemon would first judge that day's window. Each evaluation is stored as a tick of the sensor under
the selector the Dagster UI looks ticks up by (code location, repository, sensor name; the code location is
named CODE_LOCATION_NAME in every workspace of the project, `tlp ui`'s included), at its simulated time,
so `tlp ui` shows the story's ticks in the sensor's history: skipped with the trigger's reasons, or successful
with the retrain run they requested. A requested run gets its run id before it starts and carries the sensor's
name and run key as tags, which is how the daemon finds the runs a sensor already requested: a daemon started
later on the same instance does not retrain a window the story retrained.

Dagster has no public API for recording a tick; these are the instance's own tick records, as its daemon writes
them (dagster is pinned to an exact version in pyproject.toml).
"""

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.definitions.selector import InstigatorSelector
from dagster._core.scheduler.instigation import InstigatorTick, InstigatorType, TickData, TickStatus
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.utils import make_new_run_id
from dagster._utils.error import serializable_error_info_from_exc_info

from tl_platform.orchestration import CODE_LOCATION_NAME

SensorOutcome = dg.SensorResult | dg.SkipReason


@dataclass(frozen=True)
class RequestedRun:
    """A run a recorded tick requested: its reserved id and the tags that tie it to the sensor and its key."""

    run_id: str
    request: dg.RunRequest
    tags: dict[str, str]


@dataclass(frozen=True)
class EvaluatedTick:
    """One recorded evaluation: what the sensor returned, the cursor it left, and the runs it requested."""

    tick_id: int
    outcome: SensorOutcome
    cursor: str | None
    runs: list[RequestedRun]


@dataclass(frozen=True)
class SimulatedTicks:
    """One sensor's ticks in ``instance``, under the project's code location (CODE_LOCATION_NAME)."""

    instance: dg.DagsterInstance
    sensor_name: str
    location_name: str = CODE_LOCATION_NAME

    @property
    def selector_id(self) -> str:
        return InstigatorSelector(location_name=self.location_name, repository_name=SINGLETON_REPOSITORY_NAME,
                                  name=self.sensor_name).get_id()

    def evaluate(self, at: datetime, context: dg.SensorEvaluationContext, evaluation: Callable[[], SensorOutcome],
                 runs_done: Mapping[str, str] | None = None) -> EvaluatedTick:
        """Run ``evaluation`` as a tick at ``at``; a failing one is recorded FAILURE with its error and raised.

        ``runs_done`` maps run keys to the runs that already carried them out (an evaluation repeated after an
        interruption): the tick names those runs instead of reserving new ids that would never run."""
        started = at.timestamp()
        tick = self.instance.create_tick(TickData(
            # The origin id names the code server process that served the sensor, which only a daemon has; the
            # UI and the daemon find ticks by selector id, so the selector stands in for it.
            instigator_origin_id=self.selector_id, instigator_name=self.sensor_name,
            instigator_type=InstigatorType.SENSOR, status=TickStatus.STARTED, timestamp=started,
            selector_id=self.selector_id,
        ))
        clock = time.monotonic()
        try:
            outcome = evaluation()
        except Exception:
            error = serializable_error_info_from_exc_info(sys.exc_info())
            self._finish(tick, started, clock, TickStatus.FAILURE, error=error, failure_count=1)
            raise
        if isinstance(outcome, dg.SkipReason):
            cursor = context.cursor
            self._finish(tick, started, clock, TickStatus.SKIPPED, skip_reason=outcome.skip_message, cursor=cursor)
            return EvaluatedTick(tick.tick_id, outcome, cursor, [])
        done = runs_done or {}
        runs = [RequestedRun(done.get(str(request.run_key)) or make_new_run_id(), request, self.run_tags(request))
                for request in outcome.run_requests or []]
        self._finish(tick, started, clock, TickStatus.SUCCESS if runs else TickStatus.SKIPPED, cursor=outcome.cursor,
                     run_ids=[run.run_id for run in runs], run_keys=[str(run.request.run_key) for run in runs],
                     run_requests=list(outcome.run_requests or []))
        return EvaluatedTick(tick.tick_id, outcome, outcome.cursor, runs)

    def run_tags(self, request: dg.RunRequest) -> dict[str, str]:
        tags = {**dict(request.tags), SENSOR_NAME_TAG: self.sensor_name}
        if request.run_key is not None:
            tags[RUN_KEY_TAG] = request.run_key
        return tags

    def ticks(self, limit: int = 100) -> list[InstigatorTick]:
        """This sensor's recorded ticks, newest first (the daemon's and these alike)."""
        return list(self.instance.get_ticks(self.selector_id, self.selector_id, limit=limit))

    def _finish(self, tick: InstigatorTick, started: float, clock: float, status: TickStatus, **fields: object) -> None:
        # the end is the simulated start plus the evaluation's real duration, so the UI shows how long it took
        took = time.monotonic() - clock
        self.instance.update_tick(InstigatorTick(
            tick.tick_id, tick.tick_data.with_status(status, end_timestamp=started + took, **fields)))
