"""The prediction log: every answered request, its monitoring features, shadow predictions, and feedback.

One interface over SQLAlchemy Core; the URL picks the backend (``sqlite:///path.db`` embedded, in WAL mode
with ``synchronous=NORMAL``, or FULL by choice; ``postgresql+psycopg://...`` in production). Writes of predictions go through a
single writer thread that group-commits: it takes every pending row from concurrent requests, commits them in
one transaction, then resolves their futures. Requests reply only after their future resolves, so an answered
request is on disk even if the process is killed right after.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

SERVED = "served"
SHADOW = "shadow"


class UnknownRequestError(LookupError):
    """Feedback names a request id (and item) that is not in the log."""


class DuplicateFeedbackError(ValueError):
    """Feedback for this request id and item was already recorded."""


class InvalidFeedbackError(ValueError):
    """Feedback breaks a rule that needs the logged prediction (a label the model does not have)."""


@dataclass(frozen=True)
class PredictionRow:
    """One text of one request, as scored by one variant (``role`` served, or shadow for the silent challenger)."""

    request_id: str
    item_index: int
    role: str
    ts: datetime
    unit_id: str | None
    variant: str
    model_version: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    latency_ms: float
    text_chars: int
    token_count: int
    unknown_share: float
    truncated: bool
    projection: tuple[float, ...]
    error: str | None = None

    def to_db(self) -> dict[str, Any]:
        data = dict(vars(self))  # shallow: dataclasses.asdict deep-copies, a visible share of the server's CPU
        data["probabilities"] = json.dumps(self.probabilities) if self.probabilities is not None else None
        data["projection"] = json.dumps(list(self.projection))
        return data


@dataclass(frozen=True)
class CommitStats:
    rows: int
    seconds: float


def _tables(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table]:
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
        sa.Column("probabilities", sa.Text),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("text_chars", sa.Integer, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("unknown_share", sa.Float, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )
    feedback = sa.Table(
        f"{prefix}feedback",
        metadata,
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("outcome", sa.Float),
    )
    return metadata, predictions, feedback


def make_engine(url: str, sqlite_synchronous: str = "normal") -> Engine:
    """An engine for the URL; SQLite gets WAL, the chosen synchronous level and a busy timeout on every connection.

    In WAL mode ``normal`` writes each commit to the WAL before returning (it survives the process being
    killed) and syncs at checkpoints; ``full`` syncs every commit (it also survives a power loss).
    """
    if sqlite_synchronous not in ("normal", "full"):
        raise ValueError(f"sqlite_synchronous must be 'normal' or 'full', got {sqlite_synchronous!r}")
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
        cursor.close()

    return engine


_STOP = object()


class PredictionLog:
    """Group-committed prediction rows, feedback joined by request id, on SQLite or Postgres."""

    def __init__(
        self,
        url: str,
        table_prefix: str = "",
        max_rows_per_commit: int = 1000,
        on_commit: Callable[[CommitStats], None] | None = None,
        sqlite_synchronous: str = "normal",
    ) -> None:
        self.url = url
        self.engine = make_engine(url, sqlite_synchronous)
        self.metadata, self.predictions, self.feedback = _tables(table_prefix)
        self.metadata.create_all(self.engine)
        self.max_rows_per_commit = max_rows_per_commit
        self._on_commit = on_commit
        self._pending: queue.Queue[Any] = queue.Queue()
        self._writer: threading.Thread | None = None
        self.commits = 0
        self.failed_commits = 0

    # -- writing predictions -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="tlp-log-writer", daemon=True)
            self._writer.start()

    @property
    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then end the writer."""
        if self._writer is not None:
            self._pending.put(_STOP)
            self._writer.join(timeout)
            self._writer = None

    def close(self) -> None:
        self.stop()
        self.engine.dispose()

    def submit(self, rows: Sequence[PredictionRow]) -> Future[None]:
        """Queue rows for the next group commit; the future resolves once they are committed."""
        future: Future[None] = Future()
        self._pending.put(([row.to_db() for row in rows], future))
        return future

    def _write_loop(self) -> None:
        while True:
            first = self._pending.get()
            if first is _STOP:
                return
            group = [first]
            rows = len(first[0])
            stop_after = False
            while rows < self.max_rows_per_commit:
                try:
                    entry = self._pending.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stop_after = True
                    break
                group.append(entry)
                rows += len(entry[0])
            self._commit(group)
            if stop_after:
                return

    def _commit(self, group: list[tuple[list[dict[str, Any]], Future[None]]]) -> None:
        rows = [row for entry_rows, _ in group for row in entry_rows]
        started = time.perf_counter()
        try:
            with self.engine.begin() as connection:
                connection.execute(self.predictions.insert(), rows)
        except Exception as err:  # every waiting request gets the error and answers 500
            self.failed_commits += 1
            logger.exception("group commit of %d rows failed", len(rows))
            for _, future in group:
                future.set_exception(err)
            return
        self.commits += 1
        for _, future in group:
            future.set_result(None)
        if self._on_commit is not None:
            self._on_commit(CommitStats(len(rows), time.perf_counter() - started))

    # -- feedback ------------------------------------------------------------------------------------------

    def record_feedback(
        self, request_id: str, item_index: int, label: str | None, outcome: float | None, ts: datetime | None = None
    ) -> None:
        """Join feedback to a served prediction; raise UnknownRequestError, DuplicateFeedbackError or InvalidFeedbackError."""
        served = self.served_row(request_id, item_index)
        if served is None:
            raise UnknownRequestError(
                f"request_id: no served prediction with request_id {request_id!r} and item_index {item_index}"
            )
        if label is not None and served["probabilities"] is not None:
            allowed = sorted(json.loads(served["probabilities"]))
            if label not in allowed:
                raise InvalidFeedbackError(f"label: must be one of the model's labels {allowed}, got {label!r}")
        row = {"request_id": request_id, "item_index": item_index, "ts": ts or datetime.now(UTC), "label": label, "outcome": outcome}
        try:
            with self.engine.begin() as connection:
                connection.execute(self.feedback.insert(), [row])
        except sa.exc.IntegrityError as err:
            raise DuplicateFeedbackError(
                f"request_id: feedback for request_id {request_id!r} item_index {item_index} was already recorded"
            ) from err

    # -- reading (tests, monitoring) -----------------------------------------------------------------------

    def served_row(self, request_id: str, item_index: int = 0) -> dict[str, Any] | None:
        query = sa.select(self.predictions).where(
            self.predictions.c.request_id == request_id,
            self.predictions.c.item_index == item_index,
            self.predictions.c.role == SERVED,
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def rows(self, role: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(self.predictions).order_by(self.predictions.c.ts, self.predictions.c.item_index)
        if role is not None:
            query = query.where(self.predictions.c.role == role)
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    def joined_feedback(self) -> list[dict[str, Any]]:
        """Served predictions with their feedback (label, outcome), for accuracy and business metrics."""
        p, f = self.predictions, self.feedback
        query = (
            sa.select(p.c.request_id, p.c.item_index, p.c.variant, p.c.model_version, p.c.label.label("predicted"),
                      f.c.label.label("true_label"), f.c.outcome, f.c.ts.label("feedback_ts"))
            .join(f, sa.and_(p.c.request_id == f.c.request_id, p.c.item_index == f.c.item_index))
            .where(p.c.role == SERVED)
            .order_by(f.c.ts)
        )
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    def drop_tables(self) -> None:
        self.metadata.drop_all(self.engine)
