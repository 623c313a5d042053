"""`tlp run`: the closed-loop story from command-line choices, run by ``closed_loop`` in a child process.

The child owns the terminal's progress and Dagster's event log; this side only turns flags into the story's
settings and waits. Ctrl-C reaches both: the child stops cleanly and says how to resume, so this side ignores it.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from typing import Any

from tl_platform.orchestration import RunConfig, dagster_environment, ensure_instance_storage
from tl_platform.story.scenario import DOMAINS, StoryConfig, shortened


def story_settings(args: argparse.Namespace, ops: RunConfig) -> tuple[StoryConfig, dict[str, Any]]:
    """The story's configuration and the op config merged into its runs; a bad choice raises ValueError."""
    fields: dict[str, Any] = {"seed": args.seed}
    if args.domain:
        others = [d for d in DOMAINS if d != args.domain]
        fields.update(domain=args.domain, benign_domain=others[0], harmful_domain=others[1])
    if args.skip_domain_adaptation:
        fields["domain_adaptation"] = False
    if args.epochs is not None:
        fields["task_epochs"] = args.epochs
    config = shortened(**fields) if args.quick else StoryConfig(**fields)
    # --method, --foundation and a --config file's ops travel as op config, merged into each run of the story
    return config, dict(ops.get("ops", {}))


def cmd_story(args: argparse.Namespace, ops: RunConfig) -> int:
    try:
        config, merged = story_settings(args, ops)
    except ValueError as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 2
    env = dagster_environment()
    ensure_instance_storage(env)
    command = [sys.executable, "-m", "closed_loop", "--story-config", json.dumps(config.to_json()),
               "--ops", json.dumps(merged), "--owner", args.owner]
    if args.restart:
        command.append("--restart")
    child = subprocess.Popen(command, env=env)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child handles Ctrl-C and says how to resume
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
