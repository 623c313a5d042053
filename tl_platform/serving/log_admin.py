"""Administer a prediction log without starting a server (and without ``tlp``).

    python -m tl_platform.serving.log_admin migrate --log-url URL [--table-prefix P]
    python -m tl_platform.serving.log_admin current --log-url URL [--table-prefix P]
    python -m tl_platform.serving.log_admin purge-texts --log-url URL --older-than-days N [--table-prefix P]

``migrate`` brings the schema to head (adopting a log made before migrations), under the same lock the
servers take, so it is safe while replicas start. ``current`` prints the revision and exits 1 unless it is at
head. ``purge-texts`` sets to NULL the text of rows logged more than N days ago (the features stay); it needs
the schema at head and migrates nothing. Exit status 2 on a bad argument or a schema it cannot use.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tl_platform.serving.config import LOG_URL_VARIABLE
from tl_platform.serving.log_migrations import (
    LogSchemaError,
    current_revision,
    describe_revision,
    head_revision,
    migrate_log,
)
from tl_platform.serving.log_schema import make_engine

MAX_RETENTION_DAYS = 3650


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--older-than-days must be an integer, got {value!r}") from err
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"--older-than-days must be in [0, {MAX_RETENTION_DAYS}], got {days}")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tl_platform.serving.log_admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("migrate", "bring the schema to the head revision (once, under a lock)"),
        ("current", "print the schema revision; exit 1 unless it is at head"),
        ("purge-texts", "set to NULL the text of rows older than N days (features stay)"),
    ):
        command = sub.add_parser(name, help=help_text)
        env_url = os.environ.get(LOG_URL_VARIABLE)
        command.add_argument("--log-url", default=env_url, required=not env_url,
                             help=f"SQLAlchemy URL of the prediction log (default: ${LOG_URL_VARIABLE}, which keeps "
                             "a password out of the command line)")
        command.add_argument("--table-prefix", default="", help="prefix of the log's table names (default none)")
        if name == "purge-texts":
            command.add_argument("--older-than-days", type=_days, required=True,
                                 help=f"purge texts logged more than this many days ago, in [0, {MAX_RETENTION_DAYS}]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    engine = make_engine(args.log_url)
    try:
        if args.command == "migrate":
            outcome = migrate_log(engine, args.table_prefix)
            how = " (adopted a log made before migrations)" if outcome.adopted else ""
            print(f"prediction log: {outcome.before or 'none'} -> {outcome.after}{how}" if outcome.upgraded
                  else f"prediction log: already at {outcome.after} (head)")
            return 0
        if args.command == "current":
            head = head_revision()
            with engine.connect() as connection:
                found, described = current_revision(connection, args.table_prefix), describe_revision(connection, args.table_prefix)
            print(f"prediction log: revision {described}; head {head}")
            return 0 if found == head else 1
        from tl_platform.serving.prediction_log import PredictionLog

        log = PredictionLog(args.log_url, args.table_prefix, migrate=False)
        try:
            cutoff = datetime.now(UTC) - timedelta(days=args.older_than_days)
            purged = log.purge_texts(cutoff)
        finally:
            log.close()
        print(f"prediction log: removed the text of {purged} rows logged before {cutoff.isoformat(timespec='seconds')}")
        return 0
    except LogSchemaError as err:
        print(f"log_admin: {err}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
