"""`python -m closed_loop`: the story from its settings, progress on the terminal, Dagster's events in a file."""

import argparse
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster._core.errors import DagsterExecutionInterruptedError

import closed_loop
from closed_loop.runs import StepFailed, fail_orphaned_runs
from closed_loop.story import Story
from tl_platform.local_state import is_default_home, tlp_home
from tl_platform.story.progress import Progress, format_duration
from tl_platform.story.report import write_story_report
from tl_platform.story.scenario import StoryConfig
from tl_platform.story.state import StoryLockedError, StoryMismatchError, StoryStore
from tl_platform.story.summary import summary_lines


def run_story(config: StoryConfig, progress: Progress, log_path: Path, ops_overrides: dict[str, Any], owner: str,
              restart: bool = False) -> int:
    home = tlp_home()
    store = StoryStore(home)
    try:
        with store.lock():
            if restart and store.path.exists():
                store.path.rename(store.path.with_name(f"story-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"))
            state, resumed = store.start_or_resume(config)
            story = Story(config, state, store, progress, log_path, ops_overrides, owner)
            if resumed:
                orphans = fail_orphaned_runs(story.instance, state.fingerprint)
                progress.line(f"resuming the story in {home}: {state.days_done} of {config.total_days} days done"
                              + (f"; {orphans} run(s) left running by the stopped command marked failed" if orphans else ""))
            began = time.monotonic()
            try:
                story.plan()
                story.models()
                story.days()
                story.proposal()
                report = write_story_report(state, config, home / "story" / "report.html", story.load_proposal(),
                                            {"state": str(store.path), "Dagster events": str(log_path),
                                             "serving log": str(home / "story" / "serving.log"),
                                             "prediction log": story.log_url})
                state.finished = True
                story.save()
            except (KeyboardInterrupt, DagsterExecutionInterruptedError):
                story.save()
                progress.line(f"\nstopped in {state.position(config.total_days)}: everything before it is kept. Run "
                              "the same command again to resume there, or add --restart to start over.")
                return 130
            except StepFailed as err:
                story.save()
                progress.line(f"\ntlp: {err}\nFix the cause and run the same command again to resume.")
                return 1
            except Exception as err:  # reported, with the traceback in the log, never hidden
                story.save()
                traceback.print_exc()
                progress.line(f"\ntlp: the story stopped on an unexpected error: {type(err).__name__}: {err}\n"
                              f"The traceback is at the end of {log_path}; the same command resumes after the last "
                              "finished step.")
                return 1
            for line in summary_lines(state, config, report, log_path, time.monotonic() - began,
                                      None if is_default_home(home) else home):
                progress.line(line)
            return 0
    except (StoryLockedError, StoryMismatchError) as err:
        progress.line(f"tlp: {err}")
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m closed_loop", description=str(closed_loop.__doc__).splitlines()[0])
    parser.add_argument("--story-config", help="JSON of StoryConfig fields (seed, days, volumes, ...)")
    parser.add_argument("--ops", help="JSON of Dagster op config merged into every run of the story")
    parser.add_argument("--owner", default="ML platform on-call", help="who owns the monitoring loop (ROI curve)")
    parser.add_argument("--restart", action="store_true", help="start over instead of resuming a stopped story")
    args = parser.parse_args(argv)
    try:
        config = StoryConfig(**json.loads(args.story_config or "{}"))
        ops = json.loads(args.ops or "{}")
    except (TypeError, ValueError) as err:
        print(f"tlp: bad story settings: {err}", file=sys.stderr)
        return 2
    log_path = tlp_home() / "story" / f"events-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The terminal keeps the progress; everything else written to stdout or stderr (Dagster's event stream,
    # library warnings, native code) goes to the log file, at the descriptor level so nothing slips past.
    terminal = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    progress = Progress(terminal)
    progress.line(f"tlp run: the closed loop on the embedded default ({config.total_days} simulated days, seed "
                  f"{config.seed}); Dagster's events go to {log_path}")
    with open(log_path, "ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        started = time.monotonic()
        code = run_story(config, progress, log_path, ops, args.owner, args.restart)
    progress.line(f"tlp run: {'done' if code == 0 else 'stopped'} after {format_duration(time.monotonic() - started)}")
    return code


if __name__ == "__main__":
    sys.exit(main())

