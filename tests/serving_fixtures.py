"""Shared fixtures of the serving tests: one tiny task bundle and its exported bundle per test session, and
prediction log URLs on SQLite and Postgres.

Import the fixtures into a test module (``from tests.serving_fixtures import serving_bundles``); the bundles
are built once per session even when several modules import them. ``log_url`` runs a test on a fresh SQLite
file and on the Postgres at 127.0.0.1:5432 (trust auth, user postgres, database test) under a table prefix of
its own, dropped afterwards; the Postgres case skips, saying why, when that server is unreachable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.tiny_bundles import build_tiny_exported_bundle, build_tiny_task_bundle
from tl_platform.serving.deployment import DeploymentRecord, VariantSpec, write_deployment_record
from tl_platform.serving.log_schema import make_engine
from tl_platform.serving.prediction_log import PredictionLog

_BUILT: dict[str, ServingBundles] = {}


@dataclass(frozen=True)
class ServingBundles:
    task: Path
    exported: Path


@pytest.fixture(scope="session")
def serving_bundles(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ServingBundles:
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        root = tmp_path_factory.mktemp("serving_bundles")
        task = build_tiny_task_bundle(tiny_bert_dir, root / "task", epochs=1)
        exported = build_tiny_exported_bundle(task, root / "exported")
        _BUILT[key] = ServingBundles(task, exported)
    return _BUILT[key]


def write_record(path: Path, bundle: Path, version: str = "1", challenger_version: str | None = None,
                 share: float = 0.0, shadow: bool = False, precision: str = "int8", digest: str | None = None,
                 experiment_id: str | None = None, routing_salt: str | None = None) -> Path:
    champion = VariantSpec(version, bundle, precision, bundle_sha256=digest)  # type: ignore[arg-type]
    challenger = VariantSpec(challenger_version, bundle, precision) if challenger_version else None  # type: ignore[arg-type]
    record = DeploymentRecord(champion, challenger, share, shadow, experiment_id=experiment_id, routing_salt=routing_salt)
    return write_deployment_record(path, record)


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_reason() -> str | None:
    """Why the Postgres tests cannot run here, or None when they can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except sa.exc.OperationalError as err:
        return f"Postgres at 127.0.0.1:5432 (database test, user postgres) is unreachable: {str(err).splitlines()[0]}"
    return None


def drop_log(url: str, prefix: str) -> None:
    """Drop a log's tables and version table with plain SQL (not the code under test)."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        rollup = ("ab_daily", "ab_latency_tail", "ab_operations", "ab_rollup", "ab_slices", "ab_unit_days",
                  "ab_unit_slices", "ab_units")  # revision 0004's A/B state beside the log
        for table in ("predictions", "feedback", "prediction_log_version", "_alembic_tmp_predictions", *rollup):
            connection.execute(sa.text(f'DROP TABLE IF EXISTS "{prefix}{table}"'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, table prefix) of an empty log database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}", ""
        return
    reason = postgres_reason()
    if reason is not None:
        pytest.skip(reason)
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    yield POSTGRES_URL, prefix
    drop_log(POSTGRES_URL, prefix)


@pytest.fixture
def started_log(log_url: tuple[str, str]) -> Iterator[PredictionLog]:
    """A PredictionLog on each backend of ``log_url``, its writer running."""
    opened = PredictionLog(log_url[0], log_url[1])
    opened.start()
    yield opened
    opened.close()


def old_tables(prefix: str) -> sa.MetaData:
    """The schema PredictionLog made with metadata.create_all before migrations, frozen here."""
    metadata = sa.MetaData()
    sa.Table(
        f"{prefix}predictions", metadata,
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("unit_id", sa.String(256)),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("confidence", sa.Float),
        sa.Column("probabilities", sa.Text),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("text_chars", sa.Integer, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("unknown_share", sa.Float, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )
    sa.Table(
        f"{prefix}feedback", metadata,
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("outcome", sa.Float),
    )
    return metadata


OLD_PROJECTIONS = {"a" * 32: [0.5, -1.25], "b" * 32: [], "c" * 32: [1e-05, 2.0, -3.5, 4.25], "d" * 32: [0.1] * 8}


def make_old_log(url: str, prefix: str) -> None:
    """A log as the previous release left it: create_all's tables, rows with JSON projections, one feedback."""
    engine = make_engine(url)
    metadata = old_tables(prefix)
    metadata.create_all(engine)
    predictions, feedback = metadata.tables[f"{prefix}predictions"], metadata.tables[f"{prefix}feedback"]
    ts = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(predictions.insert(), [
            {"request_id": rid, "item_index": 0, "role": "served", "ts": ts, "unit_id": "u", "variant": "champion",
             "model_version": "3", "label": "1", "confidence": 0.9, "probabilities": '{"0": 0.1, "1": 0.9}',
             "latency_ms": 3.0, "text_chars": 10, "token_count": 4, "unknown_share": 0.0, "truncated": False,
             "projection": json.dumps(values), "error": None}
            for rid, values in OLD_PROJECTIONS.items()
        ])
        connection.execute(feedback.insert(), [{"request_id": "a" * 32, "item_index": 0, "ts": ts, "label": "1", "outcome": None}])
    engine.dispose()
