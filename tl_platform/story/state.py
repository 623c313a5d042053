"""What the main command has done so far, kept on disk after every step so that a stopped run resumes.

One JSON file under TLP_HOME, replaced atomically (write, fsync, rename): a run killed at any moment leaves
either the previous state or the new one, never half of either. A file lock keeps a second command from
running the story on the same home at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tl_platform.story.scenario import StoryConfig, first_day

STATE_FILE = "story.json"
LOCK_FILE = "story.lock"


class StoryLockedError(RuntimeError):
    """Another command is running the story on the same TLP_HOME."""


class StoryMismatchError(RuntimeError):
    """The home holds a story run with another configuration; resuming it with this one would mix the two."""


def fingerprint(config: StoryConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class StoryState:
    """Progress and findings. ``days`` holds one record per finished day (see ``tl_platform.story.records.day_record``)."""

    fingerprint: str
    config: dict[str, Any]
    first_day: str = ""  # ISO date of the first simulated day, fixed when the story starts
    stage_seconds: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    models_run_id: str | None = None
    champion_version: str | None = None
    sensor_cursor: str | None = None
    replaying: int | None = None  # a day whose traffic was being sent when the run stopped
    days: list[dict[str, Any]] = field(default_factory=list)
    retrain: dict[str, Any] | None = None
    experiment: dict[str, Any] | None = None
    proposal_run_id: str | None = None
    finished: bool = False

    @property
    def days_done(self) -> int:
        return len(self.days)

    def position(self, total_days: int) -> str:
        """Where a story stopped now would resume, in words: the first step not yet done."""
        if self.plan is None:
            return "the transfer plan"
        if self.models_run_id is None:
            return "the model stages"
        if self.days_done < total_days:
            return f"day {self.days_done + 1} of {total_days}"
        return "the cost report" if self.proposal_run_id is None else "the report"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoryState:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


class StoryStore:
    """The state file of one TLP_HOME."""

    def __init__(self, home: Path) -> None:
        self.directory = home / "story"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / STATE_FILE

    def load(self) -> StoryState | None:
        if not self.path.is_file():
            return None
        try:
            return StoryState.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as err:
            raise StoryMismatchError(f"{self.path} is not a story state file ({err}); move it aside or run with "
                                     "--restart") from err

    def start_or_resume(self, config: StoryConfig) -> tuple[StoryState, bool]:
        """The stored state when it is this configuration's (resumed: True), else a new one.

        A finished story starts again from the beginning on the same home: its models and runs stay in the
        catalogue and the registry, and the new run registers new versions beside them.
        """
        stored = self.load()
        wanted = fingerprint(config)
        if stored is not None and not stored.finished:
            if stored.fingerprint != wanted:
                raise StoryMismatchError(
                    f"{self.path} holds an unfinished story with another configuration (seed or settings differ: "
                    f"{_differences(stored.config, config.to_json())}); run again with the same settings to resume "
                    "it, or with --restart to start over")
            return stored, True
        today = datetime.now(UTC).date()
        return StoryState(fingerprint=wanted, config=config.to_json(),
                          first_day=first_day(config, today).isoformat()), False

    def save(self, state: StoryState) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(state.to_json(), file, indent=1, default=str)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the home for this command; a second one is refused at once, naming the holder."""
        path = self.directory / LOCK_FILE
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoryLockedError(f"the story on {self.directory.parent} is already running ({holder}); wait for "
                                       "it, or set TLP_HOME to run another beside it") from err
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    changed = [f"{key} {stored.get(key)!r} -> {wanted.get(key)!r}" for key in sorted(set(stored) | set(wanted))
               if stored.get(key) != wanted.get(key)]
    return ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
