"""ServingConfig: every setting of the serving process, validated at construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tl_platform.serving.deployment import ROUTING_FIELD_CHARS
from tl_platform.validation import require as _require

OverlongPolicy = Literal["truncate", "reject"]
DEFAULT_BUCKET_EDGES: tuple[int, ...] = (16, 32, 64, 128, 256, 512)


DEFAULT_MAX_TEXT_CHARS = 10_000

LOG_URL_VARIABLE = "TLP_PREDICTION_LOG_URL"  # where `--log-url` defaults from: a URL with a password stays off argv


@dataclass(frozen=True)
class ServingConfig:
    """Settings of one serving process.

    Attributes:
        deployment: path of the deployment record (JSON) the server reads, and watches for changes; or None with
            ``registry_model`` set.
        registry_model: the registered serving model whose deployment record (a model tag) the server reads and
            watches, downloading the versions it names from the tracking server at ``tracking_uri`` into
            ``model_cache``; exactly one of ``deployment`` and ``registry_model`` is set.
        tracking_uri: the MLflow tracking server (with ``registry_model``).
        model_cache: where downloaded versions are kept (with ``registry_model``).
        log_url: SQLAlchemy URL of the prediction log (``sqlite:///path.db`` embedded, ``postgresql+psycopg://`` production).
        intra_op_threads: ONNX Runtime (or torch) intra-op threads per model session, in [1, 64].
        batch_workers: threads that take batches off the queue and run the model, in [1, 64].
        max_batch_size: most texts in one model call, in [1, 1024].
        max_wait_ms: longest a text waits for companions before its batch runs anyway, in [0, 1000].
        bucket_edges: upper token-length bounds of the length buckets (ascending); texts of one batch come from
            one bucket, so padding is bounded by the bucket's width. Empty: one bucket (no length bucketing).
        max_texts_per_request: most texts in one ``POST /predict``, in [1, 10000]; more is refused with 413.
        max_text_chars: longest accepted text in characters, in [1, 1000000].
        on_overlong: ``reject`` answers 413 to a text over ``max_text_chars``; ``truncate`` cuts it to that many
            characters. Either way the tokenizer truncates at the model's max_length, as training did.
        shadow_workers: threads that score shadow requests on the challenger, in [1, 16].
        shadow_queue_size: pending shadow requests before new ones are dropped (and counted), in [1, 100000].
        reload_interval_s: how often the deployment record is checked for changes, in [0.05, 3600].
        routing_salt: salt of the unit-id hash, 1 to 128 characters; change it to reshuffle units between variants.
            A deployment record's own ``routing_salt`` (one per experiment) takes precedence; every log row records
            the salt actually used.
        log_max_rows_per_commit: most log rows one group commit writes, in [1, 100000].
        sqlite_synchronous: ``normal`` (default): a commit reaches the operating system before the reply, so an
            answered request survives the server being killed (SIGKILL), not a power loss; ``full`` also waits for
            the disk (fsync) on every group commit. On the 2-core machine ``full`` cost about a quarter of INT8
            requests/s at concurrency 8. Postgres is unaffected.
        capture_text: the privacy switch. True (default): each request's text (as scored, after any truncation)
            is stored in the prediction log, for drift analysis, labelling and retraining, and kept
            ``text_retention_days``. False: the text column stays NULL; the monitoring features (length, token
            count, unknown share, confidence, label, embedding projection) are still logged. Turn it off where
            callers' texts may not be stored.
        text_retention_days: logged texts older than this many days are set to NULL (the row and its features
            stay), in [1, 3650]. The server purges once at start and then every ``text_purge_interval_s``, on a
            background thread; ``python -m tl_platform.serving.log_admin purge-texts`` does the same by hand.
        text_purge_interval_s: seconds between retention purges, in [1, 86400] (default hourly).
        migrate_log: True (default): at start, bring the log's schema to the head Alembic revision, once across
            replicas (under a lock). False (``--no-migrate``): refuse to start unless the schema is already at head.
        accept_event_time: False (default): the server's clock times every log row and feedback, and a request
            carrying an ``X-Event-Time`` header is refused (400). True (``--accept-event-time``): ``POST /predict``
            and ``POST /feedback`` may carry ``X-Event-Time`` (ISO 8601 with a time zone, e.g.
            ``2025-03-01T12:00:00Z``), used as the row's or the feedback's time, so traffic simulators and replays
            of recorded traffic land in the monitoring windows of their own days. Never on a production replica
            that callers reach directly: they could then write into past windows.
        require_unit_id: False (default): a request without ``unit_id`` is answered by the champion (never
            randomised per request: its rows are left out of an experiment's analysis and counted). True
            (``--require-unit-id``): while the deployment splits units between two models, such a request is
            refused (422) so that every answer belongs to a unit of the experiment.
        log_connect_timeout_s: longest wait to open a connection to the log (or get one from the pool), in
            [0.1, 600]; Postgres rounds it up to whole seconds (at least 2).
        log_statement_timeout_s: longest one statement of the log may run, in [0.1, 3600]: Postgres cancels it
            (``statement_timeout``), SQLite stops waiting for its write lock. A request whose rows cannot commit in
            time is answered 503. Schema migrations at start run without it.
        max_in_flight: most ``POST /predict`` requests the server works on at once, in [1, 100000]; one more is
            refused at once with 429 and ``Retry-After``. This is the limit that keeps latency under overload: an
            accepted request waits behind at most ``max_in_flight`` others. About ``batch_workers x
            max_batch_size`` keeps accepted latency near the unloaded one; more trades latency for throughput.
        max_queued_texts: most texts waiting in the batching queue, in [1, 1000000] and at least
            ``max_texts_per_request``; a request whose texts do not fit is refused whole with 429 and ``Retry-After``.
        max_pending_log_rows: most rows waiting for the prediction log's group commit, in [1, 10000000] and at
            least ``max_texts_per_request``; past it a request is answered 503 with ``Retry-After`` (the log is
            behind) instead of queueing without bound.
        request_timeout_s: the deadline of one ``POST /predict`` for tokenising, queueing and inference, in
            [0.01, 600]; past it the request is answered 503 with ``Retry-After`` and its queued texts are dropped
            unscored. Waiting for the log's commit is bounded by ``log_statement_timeout_s`` instead, so a request
            whose rows reached the log is answered with them.
        log_start_wait_s: how long start-up keeps retrying an unreachable log backend (back-off from 0.5 s
            doubling to 8 s) before giving up with a message, in [0, 3600]; 0 tries once.
    """

    deployment: Path | None = None
    registry_model: str | None = None
    tracking_uri: str | None = None
    model_cache: Path = Path(".tlp/model_cache")
    log_url: str = "sqlite:///.tlp/predictions.db"
    intra_op_threads: int = 1
    batch_workers: int = 1
    max_batch_size: int = 16
    # 0: a free worker takes what is queued at once; batches still form while the workers are busy. On the
    # fine-tuned MiniLM (INT8, 2 cores) 5 ms halved requests/s at concurrency 1 and was slower at 8 and 32 too.
    max_wait_ms: float = 0.0
    bucket_edges: tuple[int, ...] = DEFAULT_BUCKET_EDGES
    max_texts_per_request: int = 64
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    on_overlong: OverlongPolicy = "reject"
    shadow_workers: int = 1
    shadow_queue_size: int = 256
    reload_interval_s: float = 1.0
    routing_salt: str = "tlp-ab"
    log_max_rows_per_commit: int = 1000
    sqlite_synchronous: str = "normal"
    capture_text: bool = True
    text_retention_days: int = 30
    text_purge_interval_s: float = 3600.0
    migrate_log: bool = True
    accept_event_time: bool = False
    require_unit_id: bool = False
    log_connect_timeout_s: float = 5.0
    log_statement_timeout_s: float = 10.0
    log_start_wait_s: float = 30.0
    max_in_flight: int = 64
    max_queued_texts: int = 4096
    max_pending_log_rows: int = 100_000
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.deployment is not None:
            object.__setattr__(self, "deployment", Path(self.deployment))
        object.__setattr__(self, "model_cache", Path(self.model_cache))
        _require(
            (self.deployment is None) != (self.registry_model is None),
            "ServingConfig needs exactly one of deployment (a record file) and registry_model (a registered model "
            f"whose record the server reads), got deployment={self.deployment!r}, registry_model={self.registry_model!r}",
        )
        _require(
            self.registry_model is None or bool(self.tracking_uri and self.tracking_uri.strip()),
            "ServingConfig.tracking_uri is required with registry_model (the MLflow server to read it from)",
        )
        object.__setattr__(self, "bucket_edges", tuple(self.bucket_edges))
        _require(bool(self.log_url.strip()), "ServingConfig.log_url must be a SQLAlchemy URL, got an empty string")
        for name, low, high in (
            ("intra_op_threads", 1, 64),
            ("batch_workers", 1, 64),
            ("max_batch_size", 1, 1024),
            ("max_texts_per_request", 1, 10_000),
            ("max_text_chars", 1, 1_000_000),
            ("shadow_workers", 1, 16),
            ("shadow_queue_size", 1, 100_000),
            ("log_max_rows_per_commit", 1, 100_000),
            ("text_retention_days", 1, 3650),
            ("max_in_flight", 1, 100_000),
            ("max_queued_texts", 1, 1_000_000),
            ("max_pending_log_rows", 1, 10_000_000),
        ):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                f"ServingConfig.{name} must be an integer in [{low}, {high}], got {value!r}",
            )
        _require(0 <= self.max_wait_ms <= 1000, f"ServingConfig.max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        _require(
            0.05 <= self.reload_interval_s <= 3600,
            f"ServingConfig.reload_interval_s must be in [0.05, 3600], got {self.reload_interval_s}",
        )
        _require(
            self.on_overlong in ("truncate", "reject"),
            f"ServingConfig.on_overlong must be 'truncate' or 'reject', got {self.on_overlong!r}",
        )
        edges = self.bucket_edges
        _require(
            all(isinstance(e, int) and e >= 1 for e in edges) and list(edges) == sorted(set(edges)),
            f"ServingConfig.bucket_edges must be strictly ascending positive integers, got {list(edges)}",
        )
        _require(
            isinstance(self.routing_salt, str) and 1 <= len(self.routing_salt) <= ROUTING_FIELD_CHARS,
            f"ServingConfig.routing_salt must be a string of 1 to {ROUTING_FIELD_CHARS} characters, got {self.routing_salt!r}",
        )
        _require(
            isinstance(self.text_purge_interval_s, int | float) and not isinstance(self.text_purge_interval_s, bool)
            and 1 <= self.text_purge_interval_s <= 86_400,
            f"ServingConfig.text_purge_interval_s must be in [1, 86400], got {self.text_purge_interval_s!r}",
        )
        seconds: tuple[tuple[str, float, float], ...] = (
            ("log_connect_timeout_s", 0.1, 600),
            ("log_statement_timeout_s", 0.1, 3600),
            ("log_start_wait_s", 0, 3600),
            ("request_timeout_s", 0.01, 600),
        )
        for setting, shortest, longest in seconds:
            value = getattr(self, setting)
            _require(
                isinstance(value, int | float) and not isinstance(value, bool) and shortest <= value <= longest,
                f"ServingConfig.{setting} must be a number of seconds in [{shortest:g}, {longest:g}], got {value!r}",
            )
        for bound in ("max_queued_texts", "max_pending_log_rows"):  # else a full-size request could never be taken
            _require(
                getattr(self, bound) >= self.max_texts_per_request,
                f"ServingConfig.{bound} must be at least max_texts_per_request ({self.max_texts_per_request}), "
                f"got {getattr(self, bound)}",
            )
        for flag in ("capture_text", "migrate_log", "accept_event_time", "require_unit_id"):
            _require(
                isinstance(getattr(self, flag), bool),
                f"ServingConfig.{flag} must be true or false, got {getattr(self, flag)!r}",
            )
        _require(
            self.sqlite_synchronous in ("normal", "full"),
            f"ServingConfig.sqlite_synchronous must be 'normal' or 'full', got {self.sqlite_synchronous!r}",
        )

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["deployment"] = str(self.deployment) if self.deployment is not None else None
        data["model_cache"] = str(self.model_cache)
        data["bucket_edges"] = list(self.bucket_edges)
        return data

    @property
    def max_body_bytes(self) -> int:
        """Largest accepted request body: every text at its limit, each character escaped (6 bytes), plus slack."""
        return self.max_texts_per_request * self.max_text_chars * 6 + 65_536
