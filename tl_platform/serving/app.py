"""The HTTP API: ``create_app(config, loader)`` builds a FastAPI app around the serving runtime.

``POST /predict``, ``POST /feedback``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Bodies are parsed
here (strict UTF-8, strict JSON, then the pydantic schema) so every bad input gets a 4xx whose message names
the field and the rule, in one error shape (``ErrorResponse``). With ``accept_event_time`` on, an
``X-Event-Time`` header times the logged rows and feedback (replays, simulators); otherwise it is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tl_platform.serving.batching import DynamicBatcher
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment_watcher import DeploymentWatcher, LiveDeployment
from tl_platform.serving.metrics import ServingMetrics
from tl_platform.serving.model import ModelLoader, load_variant
from tl_platform.serving.prediction_log import (
    DuplicateFeedbackError,
    FeedbackBeforePredictionError,
    InvalidFeedbackError,
    PredictionLog,
    UnknownRequestError,
)
from tl_platform.serving.schemas import (
    ErrorDetail,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    Prediction,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
)
from tl_platform.serving.service import PredictionService
from tl_platform.serving.text_retention import TextRetention

logger = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)
ENDPOINTS = frozenset({"/predict", "/feedback", "/healthz", "/readyz", "/metrics"})
EVENT_TIME_HEADER = "X-Event-Time"
MAX_EVENT_TIME_CHARS = 64  # the longest ISO 8601 time with microseconds and an offset is 32
EVENT_TIME_FORMAT = "an ISO 8601 time with a time zone, e.g. 2025-03-01T12:00:00Z or 2025-03-01T14:00:00+02:00"


class ApiError(Exception):
    """A refused request: HTTP status, the field at fault, the rule, and a message naming both."""

    def __init__(self, status: int, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.details = [ErrorDetail(field=field, rule=rule, message=message)]


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _validation_error(err: ValidationError) -> ApiError:
    details = []
    for problem in err.errors(include_url=False):
        field = _field_name(tuple(problem["loc"]))
        message = str(problem["msg"]).removeprefix("Value error, ")
        details.append(ErrorDetail(field=field, rule=str(problem["type"]), message=f"{field}: {message}"))
    error = ApiError(422, details[0].field, details[0].rule, details[0].message)
    error.details = details
    return error


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[Body], max_bytes: int) -> Body:
    """Strict UTF-8, strict JSON (no NaN or Infinity), then the schema; ApiError names the field and rule."""
    body = await request.body()
    if len(body) > max_bytes:
        raise ApiError(413, "body", "max_body_bytes", f"body: must be at most {max_bytes} bytes, got {len(body)}")
    if not body.strip():
        raise ApiError(400, "body", "json", "body: must be a JSON object, got an empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(
            400, "body", "utf8", f"body: must be UTF-8 encoded (invalid byte 0x{body[err.start]:02x} at offset {err.start})"
        ) from err
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ApiError(400, "body", "json", f"body: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    except ValueError as err:
        raise ApiError(400, "body", "json", f"body: {err}") from err
    except RecursionError as err:
        raise ApiError(400, "body", "json", "body: JSON nested too deeply") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from err


def event_time(request: Request, accept: bool) -> datetime | None:
    """The request's ``X-Event-Time`` in UTC, None without the header; ApiError (400) when the server does not
    accept event times, or the value is not one ISO 8601 time with a time zone."""
    values = request.headers.getlist(EVENT_TIME_HEADER)
    if not values:
        return None
    header = EVENT_TIME_HEADER
    if not accept:
        raise ApiError(400, header, "event_time_disabled",
                       f"{header}: this server logs its own clock's time; start it with --accept-event-time "
                       "(ServingConfig.accept_event_time) to let simulators and replays set the time")
    if len(values) > 1:
        raise ApiError(400, header, "event_time_once", f"{header}: give it once, got {len(values)} values")
    raw = values[0].strip()
    if len(raw) > MAX_EVENT_TIME_CHARS:
        raise ApiError(400, header, "event_time_format",
                       f"{header}: must be {EVENT_TIME_FORMAT}, at most {MAX_EVENT_TIME_CHARS} characters; got {len(raw)}")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as err:
        raise ApiError(400, header, "event_time_format", f"{header}: must be {EVENT_TIME_FORMAT}, got {raw!r}") from err
    if moment.utcoffset() is None:  # a naive time names no instant: the log and its windows are UTC
        raise ApiError(400, header, "event_time_timezone",
                       f"{header}: must carry a time zone (Z or +HH:MM); {raw!r} has none")
    try:
        return moment.astimezone(UTC)
    except OverflowError as err:  # 0001-01-01T00:00+01:00 has no UTC instant in datetime's range
        raise ApiError(400, header, "event_time_range", f"{header}: {raw!r} is outside the years 1 to 9999 in UTC") from err


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


_EVENT_TIME_PARAMETER = {
    "name": EVENT_TIME_HEADER, "in": "header", "required": False,
    "schema": {"type": "string", "format": "date-time", "maxLength": MAX_EVENT_TIME_CHARS},
    "description": f"the time to log for this request, {EVENT_TIME_FORMAT}; only on a server started with "
    "--accept-event-time (replays, simulators), refused with 400 otherwise",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": "refused; the message names the field and rule"} for status in statuses}


class RequestCounter:
    """Counts every response by endpoint and status. Plain ASGI: Starlette's BaseHTTPMiddleware runs each
    request through an extra task group and stream, which cost a measurable share of the server's CPU."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


@dataclass
class ServingRuntime:
    """Everything one app runs: reachable as ``app.state.runtime`` (tests and benchmarks read it)."""

    config: ServingConfig
    metrics: ServingMetrics
    log: PredictionLog
    batcher: DynamicBatcher
    watcher: DeploymentWatcher
    service: PredictionService
    retention: TextRetention

    def start(self) -> None:
        self.log.start()
        self.batcher.start()
        self.service.shadow.start()
        self.watcher.start()
        self.retention.start()

    def stop(self) -> None:
        self.retention.stop()
        self.watcher.stop()
        self.batcher.stop()
        self.service.shadow.stop()
        self.log.close()


def build_runtime(config: ServingConfig, loader: ModelLoader = load_variant, table_prefix: str = "") -> ServingRuntime:
    """Open the log (migrating it, or refusing a stale schema with ``migrate_log`` off), load the deployment
    (raising if it cannot be served) and wire the parts; nothing runs until ``start``."""
    metrics = ServingMetrics()
    # the log first: a --no-migrate replica on a stale schema refuses before spending time loading models
    log = PredictionLog(
        config.log_url,
        table_prefix,
        config.log_max_rows_per_commit,
        on_commit=metrics.observe_commit,
        sqlite_synchronous=config.sqlite_synchronous,
        migrate=config.migrate_log,
    )
    try:
        return _wire(config, loader, metrics, log)
    except BaseException:
        log.close()
        raise


def _wire(config: ServingConfig, loader: ModelLoader, metrics: ServingMetrics, log: PredictionLog) -> ServingRuntime:
    def on_reload(live: LiveDeployment | None, error: str | None) -> None:
        metrics.reloads.labels("failed" if error else "ok").inc()
        if live is not None:
            metrics.model_info.clear()
            metrics.model_info.labels("champion", live.champion.version, live.champion.precision).set(1)
            if live.challenger is not None:
                metrics.model_info.labels("challenger", live.challenger.version, live.challenger.precision).set(1)

    watcher = DeploymentWatcher(config.deployment, loader, config.intra_op_threads, config.reload_interval_s, on_reload)
    watcher.load()
    batcher = DynamicBatcher(
        config.max_batch_size, config.max_wait_ms, config.batch_workers, config.bucket_edges,
        on_batch=metrics.observe_batch, on_depth=metrics.queue_depth.set,
    )
    service = PredictionService(
        watcher, batcher, log, metrics, config.routing_salt, config.shadow_workers, config.shadow_queue_size,
        capture_text=config.capture_text,
    )
    retention = TextRetention(log, config.text_retention_days, config.text_purge_interval_s, metrics.observe_purge)
    return ServingRuntime(config, metrics, log, batcher, watcher, service, retention)


def create_app(config: ServingConfig, loader: ModelLoader = load_variant, table_prefix: str = "") -> FastAPI:
    """The serving app. ``loader`` turns a VariantSpec into a model (tests pass slow or failing wrappers)."""
    runtime = build_runtime(config, loader, table_prefix)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="tl_platform serving",
        version="1",
        description="Text classification by the deployed champion (and challenger) with a prediction log.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    metrics = runtime.metrics

    def respond_error(request: Request, error: ApiError) -> JSONResponse:
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        metrics.errors.labels(endpoint, error.details[0].rule).inc()
        body = ErrorResponse(error=error.details[0].message, errors=error.details)
        return JSONResponse(status_code=error.status, content=body.model_dump())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        rule = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        field = "path" if exc.status_code == 404 else "method" if exc.status_code == 405 else "request"
        return respond_error(request, ApiError(exc.status_code, field, rule, f"{field}: {exc.detail} ({request.method} {request.url.path})"))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": "invalid"}
        field = _field_name(tuple(first["loc"]))
        return respond_error(request, ApiError(422, field, str(first["type"]), f"{field}: {first['msg']}"))

    app.add_middleware(RequestCounter, metrics=metrics)

    @app.post(
        "/predict", response_model=PredictResponse, responses=_errors(400, 413, 422, 500, 503),
        openapi_extra={**_body_schema(PredictRequest), "parameters": [_EVENT_TIME_PARAMETER]},
        summary="Classify one text (text) or a batch (texts); unit_id pins the A/B variant",
    )
    async def predict(request: Request, background: BackgroundTasks) -> PredictResponse:
        when = event_time(request, config.accept_event_time)
        body = await parse_body(request, PredictRequest, config.max_body_bytes)
        texts = body.all_texts()
        if len(texts) > config.max_texts_per_request:
            raise ApiError(413, "texts", "max_texts_per_request",
                           f"texts: at most {config.max_texts_per_request} texts per request, got {len(texts)}")
        truncated = []
        for index, text in enumerate(texts):
            over = len(text) > config.max_text_chars
            if over and config.on_overlong == "reject":
                field = "text" if body.text is not None else f"texts[{index}]"
                raise ApiError(413, field, "max_text_chars",
                               f"{field}: at most {config.max_text_chars} characters, got {len(text)}")
            if over:
                texts[index] = text[: config.max_text_chars]
            truncated.append(over)
        try:
            result, job = await runtime.service.predict(texts, truncated, body.unit_id, body.attributes, when)
        except Exception as err:  # answered as 500, logged with its traceback and counted under tlp_errors
            logger.exception("predict failed")
            raise ApiError(500, "model", "inference", f"model: prediction failed ({type(err).__name__}: {err})") from err
        if job is not None:
            background.add_task(runtime.service.shadow.submit, job)  # after the reply is sent
        return PredictResponse(
            request_id=result.request_id, variant=result.variant, model_version=result.model_version,
            latency_ms=result.latency_ms,
            predictions=[Prediction(label=p.label, label_name=p.label_name, confidence=p.confidence,
                                    probabilities=p.probabilities, truncated=p.truncated) for p in result.predictions],
        )

    @app.post(
        "/feedback", response_model=FeedbackResponse, responses=_errors(400, 404, 409, 413, 422),
        openapi_extra={**_body_schema(FeedbackRequest), "parameters": [_EVENT_TIME_PARAMETER]},
        summary="The true label or a business outcome of an answered prediction, joined by request_id",
    )
    async def feedback(request: Request) -> FeedbackResponse:
        when = event_time(request, config.accept_event_time)
        body = await parse_body(request, FeedbackRequest, 65_536)
        outcome = float(body.outcome) if body.outcome is not None else None
        try:
            await asyncio.to_thread(runtime.log.record_feedback, body.request_id, body.item_index, body.label, outcome,
                                    when)
        except UnknownRequestError as err:
            raise ApiError(404, "request_id", "known_request_id", str(err)) from err
        except DuplicateFeedbackError as err:
            raise ApiError(409, "request_id", "one_feedback_per_prediction", str(err)) from err
        except InvalidFeedbackError as err:
            raise ApiError(422, "label", "model_label", str(err)) from err
        except FeedbackBeforePredictionError as err:
            raise ApiError(422, EVENT_TIME_HEADER, "feedback_after_prediction",
                           f"{EVENT_TIME_HEADER}: {str(err).removeprefix('ts: ')}") from err
        return FeedbackResponse(request_id=body.request_id, item_index=body.item_index)

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=ReadyResponse, responses=_errors(503), summary="Readiness: a deployment is loaded and the log writer runs")
    async def readyz() -> ReadyResponse:
        if not runtime.log.writer_alive:
            raise ApiError(503, "prediction_log", "writer_running", "prediction_log: the log writer is not running")
        live = runtime.watcher.current
        record = live.record
        return ReadyResponse(
            status="ready", champion_version=live.champion.version,
            challenger_version=live.challenger.version if live.challenger is not None else None,
            challenger_share=record.challenger_share, shadow=record.shadow,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
