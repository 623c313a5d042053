"""The prediction log: every answered request, its text and monitoring features, shadow predictions, feedback.

One interface over SQLAlchemy Core; the URL picks the backend (``sqlite:///path.db`` embedded, in WAL mode
with ``synchronous=NORMAL``, or FULL by choice; ``postgresql+psycopg://...`` in production). The schema comes
from Alembic revisions (``log_migrations``): opening a log migrates it to head under a lock, or, with
``migrate=False`` (a ``--no-migrate`` replica), refuses a schema that is not at head. Writes of predictions go
through a single writer thread that group-commits (``log_writer``): it takes every pending row from concurrent
requests, commits them in one transaction, then resolves their futures. Requests reply only after their future
resolves, so an answered request is on disk even if the process is killed right after. The pending queue is
bounded (``max_pending_rows``): past it a submit fails at once with ``LogBacklogError`` (the API answers 503 with
Retry-After) instead of queueing without bound behind a slow backend. A writer thread that dies fails every
waiting request (503), and is restarted after a bounded back-off (``WriterRestartPolicy``); a commit that hangs
past the connect and statement timeouts fails its waiting requests too, so no request waits without bound.

Each row carries what monitoring, experiments and retraining read: the text (NULL when capture is off, or
after ``purge_texts`` passed its retention), typed features (length, tokens, unknown share, truncation,
confidence, label, ``projection_0`` .. ``projection_7``), the experiment id, routing salt and challenger
share in force when it was served, and the request's slice ``attributes`` (``{"domain": "yelp"}``; canonical
JSON in the column, a dict in every reader). ``labelled_window``, ``served_counts`` and ``labels_recorded`` are
the monitoring and retraining reads (``log_readers``): SQL filters and joins, pandas frames or counts out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tl_platform.serving import log_readers
from tl_platform.serving.log_migrations import MigrationOutcome, migrate_log, require_head
from tl_platform.serving.log_schema import (
    PROJECTION_COLUMNS,
    PROJECTION_NAMES,
    log_tables,
    make_engine,
    version_table_name,
)
from tl_platform.serving.log_writer import CommitStats as CommitStats  # re-exported: importers use this module
from tl_platform.serving.log_writer import GroupCommitWriter, WriterRestartPolicy
from tl_platform.serving.log_writer import LogBacklogError as LogBacklogError

if TYPE_CHECKING:
    import pandas as pd

SERVED = log_readers.SERVED  # "served": the answer the caller got
SHADOW = "shadow"
_NO_PROJECTION: tuple[None, ...] = (None,) * PROJECTION_COLUMNS
FEATURE_DTYPES = log_readers.FEATURE_DTYPES  # feature_frame's columns and their pandas dtypes


class UnknownRequestError(LookupError):
    """Feedback names a request id (and item) that is not in the log."""


class DuplicateFeedbackError(ValueError):
    """Feedback for this request id and item was already recorded."""


class InvalidFeedbackError(ValueError):
    """Feedback breaks a rule that needs the logged prediction (a label the model does not have)."""


class FeedbackBeforePredictionError(ValueError):
    """Feedback given an explicit time (a replay's event time) earlier than its prediction's."""


@dataclass(frozen=True)
class PredictionRow:
    """One text of one request, as scored by one variant (``role`` served, or shadow for the silent challenger).

    ``projection`` has the exported bundle's K components (at most 8, empty for a failed scoring); it is stored
    in ``projection_0`` .. ``projection_{K-1}``. ``routing_salt``, ``experiment_id`` and ``challenger_share`` are
    the deployment's when the row was served, so an experiment's analysis can recompute every unit's variant.
    ``attributes`` are the request's slices (validated by the API: at most 16 short string pairs); None or empty
    stores NULL.
    """

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
    text: str | None
    experiment_id: str | None
    routing_salt: str
    challenger_share: float
    error: str | None = None
    attributes: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if len(self.projection) > PROJECTION_COLUMNS:  # load_variant refuses such a bundle; this guards other callers
            raise ValueError(f"projection: at most {PROJECTION_COLUMNS} components fit the log, got {len(self.projection)}")

    def to_db(self) -> dict[str, Any]:
        data = dict(vars(self))  # shallow: dataclasses.asdict deep-copies, a visible share of the server's CPU
        data["ts"] = _utc(self.ts)  # SQLite keeps the wall time and drops the offset: store UTC
        data["probabilities"] = json.dumps(self.probabilities) if self.probabilities is not None else None
        data["attributes"] = log_readers.attributes_to_json(self.attributes)
        projection = data.pop("projection")
        data.update(zip(PROJECTION_NAMES, (*projection, *_NO_PROJECTION[len(projection):]), strict=True))
        return data


_utc = log_readers.as_utc  # a naive time is taken to be UTC already (the log stores UTC)


class PredictionLog:
    """Group-committed prediction rows, feedback joined by request id, on SQLite or Postgres.

    ``migrate`` (default): bring the schema to head at construction, once across replicas (a lock);
    ``migrate=False``: raise ``LogSchemaError`` naming the current and the expected revision unless at head.
    ``writer_restart``: how the writer thread is restarted if it dies (default: 1 s doubling to 30 s, at most 5
    times in a row without a commit between). With ``statement_timeout_s`` set, a group commit that runs past
    ``connect_timeout_s + statement_timeout_s`` fails its requests and stalls the writer until it returns.
    """

    def __init__(
        self,
        url: str,
        table_prefix: str = "",
        max_rows_per_commit: int = 1000,
        on_commit: Callable[[CommitStats], None] | None = None,
        sqlite_synchronous: str = "normal",
        migrate: bool = True,
        connect_timeout_s: float | None = None,
        statement_timeout_s: float | None = None,
        max_pending_rows: int = 100_000,
        writer_restart: WriterRestartPolicy | None = None,
    ) -> None:
        if max_pending_rows < 1:
            raise ValueError(f"max_pending_rows must be at least 1, got {max_pending_rows}")
        self.url = url
        self.table_prefix = table_prefix
        self.engine = make_engine(url, sqlite_synchronous, connect_timeout_s, statement_timeout_s)
        tables = log_tables(table_prefix)
        self.metadata, self.predictions, self.feedback = tables.metadata, tables.predictions, tables.feedback
        self.migration: MigrationOutcome | None = None
        # Migrations run without the statement timeout: an index build on a large log, or waiting for another
        # replica's migration lock, may rightly take longer than any one request should.
        schema_engine = make_engine(url, sqlite_synchronous, connect_timeout_s) if self.engine.dialect.name != "sqlite" else self.engine
        try:
            if migrate:
                self.migration = migrate_log(schema_engine, table_prefix)
            else:
                require_head(schema_engine, table_prefix)
        except BaseException:
            self.engine.dispose()
            raise
        finally:
            if schema_engine is not self.engine:
                schema_engine.dispose()
        # A commit may wait for a connection, then run its statements: past both timeouts the backend hangs
        # (frozen, or packets dropped) rather than refuses, and the waiting requests are failed (503).
        commit_deadline_s = None if statement_timeout_s is None else (connect_timeout_s or 0.0) + statement_timeout_s
        self.writer = GroupCommitWriter(self._insert_rows, max_rows_per_commit, max_pending_rows, on_commit,
                                        writer_restart, commit_deadline_s)

    # -- writing predictions -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the group-commit writer thread (rows submitted before wait for it)."""
        self.writer.start()

    @property
    def writer_alive(self) -> bool:
        """The writer takes rows (False before ``start``, while a commit is past its deadline, while the thread
        restarts after dying, and once it gave up)."""
        return self.writer.alive

    @property
    def writer_state(self) -> str:
        """``idle``, ``running``, ``stalled``, ``restarting`` or ``failed`` (see ``GroupCommitWriter``)."""
        return self.writer.state

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then end the writer."""
        self.writer.stop(timeout)

    def close(self) -> None:
        self.stop()
        self.engine.dispose()

    def submit(self, rows: Sequence[PredictionRow]) -> Future[None]:
        """Queue rows for the next group commit; the future resolves once they are committed, or fails with
        LogUnavailableError (the commit failed, or the writer is not running or died: nothing would ever commit
        them), or at once with LogBacklogError when ``max_pending_rows`` are already waiting (nothing queued)."""
        return self.writer.submit([row.to_db() for row in rows])  # a row that fails to convert is never queued

    @property
    def pending_rows(self) -> int:
        return self.writer.pending_rows

    @property
    def max_rows_per_commit(self) -> int:
        return self.writer.max_rows_per_commit

    @property
    def max_pending_rows(self) -> int:
        return self.writer.max_pending_rows

    @property
    def commits(self) -> int:
        return self.writer.commits

    @property
    def failed_commits(self) -> int:
        return self.writer.failed_commits

    @property
    def _writer(self) -> threading.Thread | None:  # the writer's current thread (older tests reach for it)
        return self.writer.thread

    @property
    def _pending(self) -> Any:  # the writer's queue (older tests inject into it)
        return self.writer.queue

    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        """One group commit: every row in one transaction (the writer thread's ``write``)."""
        with self.engine.begin() as connection:
            connection.execute(self.predictions.insert(), rows)

    def ping(self) -> None:
        """One trivial query (under the engine's connect and statement timeouts); raises if the backend fails."""
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    # -- retention -----------------------------------------------------------------------------------------

    def purge_texts(self, older_than: datetime, batch_rows: int = 5000) -> int:
        """Set ``text`` to NULL on rows logged before ``older_than`` (features stay); return how many.

        In transactions of at most ``batch_rows`` rows, so the group-commit writer never waits long for the
        write lock (on SQLite there is one) behind a large first purge.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        p = self.predictions
        keys = (
            sa.select(p.c.request_id, p.c.item_index, p.c.role)
            .where(p.c.ts < _utc(older_than), p.c.text.is_not(None))
            .limit(batch_rows)
        )
        purge = (
            sa.update(p).where(sa.tuple_(p.c.request_id, p.c.item_index, p.c.role).in_(keys)).values(text=None)
        )
        total = 0
        while True:
            with self.engine.begin() as connection:
                purged = connection.execute(purge).rowcount
            total += purged
            if purged < batch_rows:
                return total

    # -- feedback ------------------------------------------------------------------------------------------

    def record_feedback(
        self, request_id: str, item_index: int, label: str | None, outcome: float | None, ts: datetime | None = None
    ) -> None:
        """Join feedback to a served prediction; raise UnknownRequestError, DuplicateFeedbackError, InvalidFeedbackError,
        or FeedbackBeforePredictionError for an explicit ``ts`` (a replay's event time) before the prediction's.

        ``ts`` None records the server's clock; a naive ``ts`` is taken to be UTC.
        """
        p = self.predictions
        query = sa.select(p.c.probabilities, p.c.ts).where(  # the label set and time: the row also holds the text
            p.c.request_id == request_id, p.c.item_index == item_index, p.c.role == SERVED
        )
        with self.engine.connect() as connection:
            served = connection.execute(query).first()
        if served is None:
            raise UnknownRequestError(
                f"request_id: no served prediction with request_id {request_id!r} and item_index {item_index}"
            )
        if label is not None and served.probabilities is not None:
            allowed = sorted(json.loads(served.probabilities))
            if label not in allowed:
                raise InvalidFeedbackError(f"label: must be one of the model's labels {allowed}, got {label!r}")
        if ts is not None and _utc(ts) < _utc(served.ts):
            raise FeedbackBeforePredictionError(
                f"ts: feedback at {_utc(ts).isoformat()} precedes its prediction, served at {_utc(served.ts).isoformat()}"
            )
        row = {"request_id": request_id, "item_index": item_index, "ts": _utc(ts) if ts is not None else datetime.now(UTC),
               "label": label, "outcome": outcome}
        try:
            with self.engine.begin() as connection:
                connection.execute(self.feedback.insert(), [row])
        except sa.exc.IntegrityError as err:
            raise DuplicateFeedbackError(
                f"request_id: feedback for request_id {request_id!r} item_index {item_index} was already recorded"
            ) from err

    # -- reading (monitoring, experiments, tests) ----------------------------------------------------------

    def feature_query(
        self, model_version: str, start: datetime, end: datetime, role: str = SERVED, include_text: bool = False,
        include_attributes: bool = False,
    ) -> sa.Select[Any]:
        """The SELECT behind ``feature_frame``: served by the (model_version, ts) index, in time order."""
        return log_readers.feature_query(self.predictions, model_version, start, end, role, include_text,
                                         include_attributes)

    def feature_frame(
        self, model_version: str, start: datetime, end: datetime, role: str = SERVED, include_text: bool = False,
        include_attributes: bool = False,
    ) -> pd.DataFrame:
        """One model version's rows with ``start <= ts < end``; see ``log_readers.feature_frame``."""
        return log_readers.feature_frame(self.engine, self.predictions, model_version, start, end, role, include_text,
                                         include_attributes)

    def labelled_window(
        self, start: datetime, end: datetime, feedback_before: datetime | None = None, model_version: str | None = None
    ) -> pd.DataFrame:
        """Served rows with ``start <= ts < end`` that have a feedback label recorded before ``feedback_before``
        (None: any time); outcome-only feedback is left out. Columns and dtypes: ``log_readers.LABELLED_DTYPES``."""
        return log_readers.labelled_window(self.engine, self.predictions, self.feedback, start, end, feedback_before,
                                           model_version)

    def served_counts(self, start: datetime, end: datetime) -> dict[tuple[str, str], int]:
        """Served rows with ``start <= ts < end`` per (model_version, variant), from the ts index."""
        return log_readers.served_counts(self.engine, self.predictions, start, end)

    def labels_recorded(self, since: datetime, until: datetime | None = None) -> dict[date, int]:
        """Labels recorded in ``[since, until)`` per UTC day of their prediction: the windows late labels changed."""
        return log_readers.labels_recorded(self.engine, self.predictions, self.feedback, since, until)

    def served_row(self, request_id: str, item_index: int = 0) -> dict[str, Any] | None:
        return log_readers.served_row(self.engine, self.predictions, request_id, item_index)

    def rows(self, role: str | None = None) -> list[dict[str, Any]]:
        """Every row (of one role), in time order, ``attributes`` as a dict (tests and small logs)."""
        return log_readers.rows(self.engine, self.predictions, role)

    def joined_feedback(self) -> list[dict[str, Any]]:
        """Served predictions with their feedback (label, outcome) and attributes, for accuracy and business metrics."""
        return log_readers.joined_feedback(self.engine, self.predictions, self.feedback)

    def drop_tables(self) -> None:
        """Drop the log's tables and its version table (tests, and tearing down a scratch log)."""
        self.metadata.drop_all(self.engine)
        version = sa.Table(version_table_name(self.table_prefix), sa.MetaData())
        version.drop(self.engine, checkfirst=True)
