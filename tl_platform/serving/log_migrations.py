"""Schema migrations of the prediction log: the Alembic revisions in ``migrations/``, run once, under a lock.

``migrate_log(engine, prefix)`` brings a log to the head revision. An empty database gets every revision; a log
made by ``metadata.create_all`` before migrations existed (its tables, no version table) is stamped at the
baseline 0001, the schema create_all made, and upgraded from there. Replicas starting together race for one
lock, so the upgrade runs once and the others then find the schema at head. ``require_head`` is the check of a
replica started with ``--no-migrate``: it refuses a schema that is not at head, naming both revisions.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from tl_platform.serving.log_schema import version_table_name

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
# The columns of 0001, to recognise a log that create_all made (and refuse to stamp anything else).
_BASELINE_COLUMNS = {
    "predictions": {
        "request_id", "item_index", "role", "ts", "unit_id", "variant", "model_version", "label", "confidence",
        "probabilities", "latency_ms", "text_chars", "token_count", "unknown_share", "truncated", "projection", "error",
    },
    "feedback": {"request_id", "item_index", "ts", "label", "outcome"},
}
_SQLITE_BUSY_MS = 30_000  # make_engine's timeout, restored after migrating
_SQLITE_MIGRATION_BUSY_MS = 600_000  # a second replica waits this long for a large log's upgrade to finish
# alembic's `context` and `op` are module-level proxies, so two migrations in one process must not overlap
_ALEMBIC = threading.Lock()


class LogSchemaError(RuntimeError):
    """The log's schema is not at the revision this code needs, or cannot be adopted; the message says which."""


@dataclass(frozen=True)
class MigrationOutcome:
    before: str | None  # the revision found; None for an empty database (or one create_all made)
    after: str
    adopted: bool  # a log create_all made, stamped at the baseline before upgrading

    @property
    def upgraded(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None, prefix: str = "") -> Config:
    """A Config with no ini file: the revisions inside the package, the open connection and the table prefix."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes["table_prefix"] = prefix
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise LogSchemaError(f"no revisions under {MIGRATIONS_DIR}; the package is incomplete")
    return head


@lru_cache(maxsize=1)
def known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def _refuse_unknown(found: str | None) -> None:
    """A revision this release has no script for was written by a newer release: neither migrate nor serve."""
    if found is not None and found not in known_revisions():
        raise LogSchemaError(
            f"prediction log schema is at revision {found}, which this release does not know (its head is "
            f"{head_revision()}): a newer release migrated the log; run that release's server"
        )


def current_revision(connection: Connection, prefix: str = "") -> str | None:
    """The revision in the log's version table; None when there is no version table."""
    return MigrationContext.configure(connection, opts={"version_table": version_table_name(prefix)}).get_current_revision()


def describe_revision(connection: Connection, prefix: str = "") -> str:
    """The revision for a message: '0002', 'none (an empty database)' or 'unversioned (...)'."""
    found = current_revision(connection, prefix)
    if found is not None:
        return found
    if sa.inspect(connection).has_table(f"{prefix}predictions"):
        return f"unversioned (tables made by create_all before migrations, i.e. {BASELINE})"
    return "none (an empty database)"


def require_head(engine: Engine, prefix: str = "") -> None:
    """Raise LogSchemaError naming the current and the expected revision unless the log is at head."""
    head = head_revision()
    with engine.connect() as connection:
        revision = current_revision(connection, prefix)
        if revision == head:
            return
        _refuse_unknown(revision)
        found = describe_revision(connection, prefix)
    raise LogSchemaError(
        f"prediction log schema is at revision {found}, expected {head} (head); migrate it first: start one "
        "server without --no-migrate, or run `python -m tl_platform.serving.log_admin migrate --log-url URL`"
    )


def migrate_log(engine: Engine, prefix: str = "") -> MigrationOutcome:
    """Bring the log to head (adopting a create_all-made log); a no-op, without the lock, when it is there."""
    head = head_revision()
    with engine.connect() as connection:
        found = current_revision(connection, prefix)
    if found == head:
        return MigrationOutcome(found, head, adopted=False)
    with engine.connect() as connection, _migration_lock(connection, prefix):
        before = current_revision(connection, prefix)  # again, under the lock: another replica may have migrated
        _refuse_unknown(before)
        adopted = before is None and sa.inspect(connection).has_table(f"{prefix}predictions")
        if adopted:
            _check_baseline(connection, prefix)
        if before != head:
            with _ALEMBIC:
                config = alembic_config(connection, prefix)
                if adopted:
                    command.stamp(config, BASELINE)
                command.upgrade(config, "head")
        after = current_revision(connection, prefix)
        connection.commit()
    assert after is not None  # upgraded to head just now
    return MigrationOutcome(before, after, adopted)


def downgrade_log(engine: Engine, revision: str, prefix: str = "") -> str | None:
    """Step the log back to ``revision`` (``base``: no tables); for recovering from a bad release."""
    with engine.connect() as connection, _migration_lock(connection, prefix):
        with _ALEMBIC:
            command.downgrade(alembic_config(connection, prefix), revision)
        after = current_revision(connection, prefix)
        connection.commit()
    return after


def _check_baseline(connection: Connection, prefix: str) -> None:
    inspector = sa.inspect(connection)
    for table, expected in _BASELINE_COLUMNS.items():
        name = f"{prefix}{table}"
        found = {column["name"] for column in inspector.get_columns(name)} if inspector.has_table(name) else set()
        if found != expected:
            raise LogSchemaError(
                f"{name} has no version table and is not the schema create_all made before migrations "
                f"(revision {BASELINE}): missing columns {sorted(expected - found)}, unexpected {sorted(found - expected)}; "
                "it cannot be adopted automatically"
            )


def _advisory_key(prefix: str) -> int:
    digest = hashlib.sha256(f"tl_platform.prediction_log:{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _migration_lock(connection: Connection, prefix: str) -> Iterator[None]:
    """Hold the log's migration lock; the caller commits what it did, anything uncommitted is rolled back."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # A session-level advisory lock on this very connection: a second replica blocks here until the first
        # has committed its upgrade and unlocked (or died, which ends its session and frees the lock).
        key = _advisory_key(prefix)
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()  # the lock outlives this transaction; the migration runs in a transaction of its own
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()
    elif dialect == "sqlite":
        # SQLite has one writer at a time: BEGIN IMMEDIATE takes that write lock before the revision is read, so
        # a second migrator waits here (busy timeout) until the first commits, then reads the head revision.
        # No lock of our own is needed, and the DDL, transactional in SQLite, rolls back if a revision fails.
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_MIGRATION_BUSY_MS}")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.rollback()
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
    else:
        raise LogSchemaError(f"the prediction log runs on sqlite or postgresql, not {dialect}")
