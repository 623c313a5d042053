"""`tlp promote` and `tlp models`: a person moving the serving model's aliases, and what the registry holds."""

from __future__ import annotations

import argparse
import os
import sys

from tl_platform.local_state import default_tracking_uri, tlp_home


def cmd_promote(args: argparse.Namespace) -> int:
    """Move the champion or challenger alias by hand, with the reason recorded on the version."""
    from tl_platform.experiments.promotion import PromotionConflictError, PromotionError, promote
    from tl_platform.tracking.mlflow_tracker import MlflowRegistry, MlflowSettings

    settings = MlflowSettings(default_tracking_uri(tlp_home()), args.experiment)
    actor = args.actor or f"{os.environ.get('USER', 'someone')} via tlp promote"
    try:
        done = promote(MlflowRegistry(settings), args.model, args.version, args.alias, args.reason, actor)
    except (PromotionError, PromotionConflictError) as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    if not done.changed:
        print(f"{done.model}: {done.alias} already names v{done.version}; nothing changed")
    else:
        print(f"{done.model}: {done.alias} v{done.previous or 'none'} -> v{done.version} ({done.reason})")
        print("  re-materialise `deployment` (tlp ui, or dagster asset materialize --select deployment) to serve it")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The registered versions of the serving model, their aliases and status, newest first."""
    from tl_platform.tracking.mlflow_tracker import MlflowSettings, registered_versions_with_aliases

    settings = MlflowSettings(default_tracking_uri(tlp_home()), args.experiment)
    versions = registered_versions_with_aliases(settings, args.model)
    if not versions:
        print(f"{args.model}: no registered versions at {settings.tracking_uri}")
        return 0
    for version, aliases, tags in versions:
        reason = next((tags[f"tlp.{a}.reason"] for a in aliases if f"tlp.{a}.reason" in tags), "")
        shown = ",".join(aliases) or "-"
        print(f"v{version:<5} {shown:<20} {tags.get('tlp.status', '-'):<18} {reason}")
    return 0
