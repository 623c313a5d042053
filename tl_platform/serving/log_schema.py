"""The prediction log's tables at the head revision, and the engine that opens it.

These definitions are what the code queries; the database gets its schema from the Alembic revisions in
``tl_platform/serving/migrations`` (``log_migrations.migrate_log``), never from ``create_all``. A test holds the
two equal, so a column added here without a revision fails there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tl_platform.serving.deployment import ROUTING_FIELD_CHARS  # the record and ServingConfig check the same bound

# Typed columns projection_0 .. projection_7: ExportConfig.projection_components is bounded by the same number,
# so every exported bundle's projection fits (a shorter one leaves the last columns NULL).
PROJECTION_COLUMNS = 8
PROJECTION_NAMES: tuple[str, ...] = tuple(f"projection_{i}" for i in range(PROJECTION_COLUMNS))


@dataclass(frozen=True)
class RollupTables:
    """The A/B rollup's state beside the log (revision 0004), written only by ``experiments.ab_rollup``.

    ``state``: one row per folded experiment (its start, slice keys, watermarks, exposure counters and the
    latency-tail thresholds). ``unit_days`` and ``unit_slices``: per unit (and UTC day, or slice value) the
    metric sums so far, both metric kinds. ``units``: the arms each unit was seen in. ``daily`` and ``slices``:
    the sufficient statistics the analysis reads, kept current by the fold. ``operations``: rows, errors and
    latency per (day, arm). ``latency_tail``: every latency at or above the arm's threshold, for an exact p99.
    """

    state: sa.Table
    unit_days: sa.Table
    unit_slices: sa.Table
    units: sa.Table
    daily: sa.Table
    slices: sa.Table
    operations: sa.Table
    latency_tail: sa.Table


@dataclass(frozen=True)
class LogTables:
    metadata: sa.MetaData
    predictions: sa.Table
    feedback: sa.Table
    rollup: RollupTables | None = None  # None for tables built without log_tables (they have no rollup)


def version_table_name(prefix: str) -> str:
    """Alembic's version table of this log; not ``alembic_version``, which MLflow uses in a database it may share."""
    return f"{prefix}prediction_log_version"


def log_tables(prefix: str) -> LogTables:
    metadata = sa.MetaData()
    predictions = sa.Table(
        f"{prefix}predictions",
        metadata,
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("unit_id", sa.String(256)),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("confidence", sa.Float),
        sa.Column("probabilities", sa.Text),  # JSON: label sets differ between models
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("text_chars", sa.Integer, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("unknown_share", sa.Float, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("text", sa.Text),  # NULL when capture is off, or after the retention purge
        # Nullable: rows logged before revision 0002 did not record them.
        sa.Column("experiment_id", sa.String(ROUTING_FIELD_CHARS)),
        sa.Column("routing_salt", sa.String(ROUTING_FIELD_CHARS)),
        sa.Column("challenger_share", sa.Float),
        *(sa.Column(name, sa.Float) for name in PROJECTION_NAMES),
        # Revision 0003: the request's slice attributes as canonical JSON (sorted keys); NULL when it sent none.
        sa.Column("attributes", sa.Text),
        # monitoring reads one version's served rows of one day from this index alone (revision 0003)
        sa.Index(f"ix_{prefix}predictions_model_version_role_ts", "model_version", "role", "ts"),
    )
    feedback = sa.Table(
        f"{prefix}feedback",
        metadata,
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),  # labels recorded since T (0003)
        sa.Column("label", sa.String(256)),
        sa.Column("outcome", sa.Float),
    )
    return LogTables(metadata, predictions, feedback, rollup_tables(metadata, prefix))


def rollup_tables(metadata: sa.MetaData, prefix: str) -> RollupTables:
    """The rollup tables of revision 0004, added to ``metadata`` (the log's, so one comparison covers both)."""
    experiment = sa.String(ROUTING_FIELD_CHARS)

    def sums() -> tuple[sa.Column[Any], ...]:  # a column belongs to one table: fresh ones each time
        return (sa.Column("labelled", sa.Integer, nullable=False), sa.Column("correct", sa.Integer, nullable=False),
                sa.Column("outcome_n", sa.Integer, nullable=False), sa.Column("outcome_sum", sa.Float, nullable=False))

    def stats() -> tuple[sa.Column[Any], ...]:
        return (sa.Column("n", sa.Integer, nullable=False), sa.Column("total", sa.Float, nullable=False),
                sa.Column("total_sq", sa.Float, nullable=False))

    state = sa.Table(
        f"{prefix}ab_rollup", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slice_keys", sa.Text, nullable=False),  # JSON list
        sa.Column("served_up_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feedback_up_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feedback_rows", sa.BigInteger, nullable=False),  # feedback rows with ts < feedback_up_to
        sa.Column("champion_units", sa.Integer, nullable=False),
        sa.Column("challenger_units", sa.Integer, nullable=False),
        sa.Column("units_in_both_arms", sa.Integer, nullable=False),
        sa.Column("champion_tail_min", sa.Float),
        sa.Column("challenger_tail_min", sa.Float),
    )
    unit_days = sa.Table(
        f"{prefix}ab_unit_days", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        *sums(),
    )
    unit_slices = sa.Table(
        f"{prefix}ab_unit_slices", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("slice_key", sa.String(ROUTING_FIELD_CHARS), primary_key=True),
        sa.Column("slice_value", sa.String(256), primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        *sums(),
    )
    units = sa.Table(
        f"{prefix}ab_units", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        sa.Column("champion", sa.Integer, nullable=False),  # 1 when seen in the arm
        sa.Column("challenger", sa.Integer, nullable=False),
    )
    daily = sa.Table(
        f"{prefix}ab_daily", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        *stats(),
        sa.Column("new_units", sa.Integer, nullable=False),
        sa.Column("change", sa.Float, nullable=False),
        sa.Column("change_sq", sa.Float, nullable=False),
    )
    slices = sa.Table(
        f"{prefix}ab_slices", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("slice_key", sa.String(ROUTING_FIELD_CHARS), primary_key=True),
        sa.Column("slice_value", sa.String(256), primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        *stats(),
    )
    operations = sa.Table(
        f"{prefix}ab_operations", metadata,
        sa.Column("experiment_id", experiment, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("rows_without_unit", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency_sum", sa.Float, nullable=False),
    )
    latency_tail = sa.Table(
        f"{prefix}ab_latency_tail", metadata,
        sa.Column("experiment_id", experiment, nullable=False),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Index(f"ix_{prefix}ab_latency_tail_experiment_variant_latency", "experiment_id", "variant", "latency_ms"),
    )
    return RollupTables(state, unit_days, unit_slices, units, daily, slices, operations, latency_tail)


def make_engine(
    url: str, sqlite_synchronous: str = "normal", connect_timeout_s: float | None = None,
    statement_timeout_s: float | None = None,
) -> Engine:
    """An engine for the URL; SQLite gets WAL, the chosen synchronous level and a busy timeout on every connection.

    In WAL mode ``normal`` writes each commit to the WAL before returning (it survives the process being
    killed) and syncs at checkpoints; ``full`` syncs every commit (it also survives a power loss).

    Timeouts (None: the driver's defaults, which on Postgres wait forever): ``connect_timeout_s`` bounds opening
    a connection (and waiting for one from the pool); ``statement_timeout_s`` bounds each statement on Postgres
    (the server cancels it) and the wait for SQLite's write lock (SQLite has no statement timeout of its own).
    """
    if sqlite_synchronous not in ("normal", "full"):
        raise ValueError(f"sqlite_synchronous must be 'normal' or 'full', got {sqlite_synchronous!r}")
    for name, value in (("connect_timeout_s", connect_timeout_s), ("statement_timeout_s", statement_timeout_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        pool: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            if connect_timeout_s is not None:  # libpq takes whole seconds, and treats 1 as 2
                connect_args["connect_timeout"] = max(2, math.ceil(connect_timeout_s))
            if statement_timeout_s is not None:
                connect_args["options"] = f"-c statement_timeout={math.ceil(statement_timeout_s * 1000)}"
        if connect_timeout_s is not None:
            pool["pool_timeout"] = connect_timeout_s
        return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    busy_timeout = statement_timeout_s if statement_timeout_s is not None else 30
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
        cursor.close()

    return engine


def _enable_wal(cursor: Any, wait_s: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``, retried while busy: two connections converting a new database at once (two
    replicas starting) get SQLITE_BUSY at once, without SQLite's busy handler; in 200 tries one in three did."""
    import sqlite3

    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
