"""The HTTP API: ``create_app(config, loader)`` builds a FastAPI app around the serving runtime.

``POST /predict``, ``POST /feedback``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Bodies are parsed
here (strict UTF-8, strict JSON, then the pydantic schema) so every bad input gets a 4xx whose message names
the field and the rule, in one error shape (``ErrorResponse``). With ``accept_event_time`` on, an
``X-Event-Time`` header times the logged rows and feedback (replays, simulators); otherwise it is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tl_platform.serving.admission import InFlightLimit, ShedReason, shed_error
from tl_platform.serving.batching import DeadlineExceededError, DynamicBatcher, QueueFullError, QueueTooSlowError
from tl_platform.serving.body_limits import BodyLimitMiddleware, BodyLimits
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment_watcher import DeploymentWatcher, LiveDeployment
from tl_platform.serving.log_availability import (
    RETRY_AFTER_S,
    UNAVAILABLE_MESSAGE,
    LogProbe,
    LogUnavailableError,
    open_with_retry,
)
from tl_platform.serving.metrics import ServingMetrics
from tl_platform.serving.model import ModelLoader, load_variant
from tl_platform.serving.prediction_log import (
    DuplicateFeedbackError,
    FeedbackBeforePredictionError,
    InvalidFeedbackError,
    LogBacklogError,
    PredictionLog,
    UnknownRequestError,
)
from tl_platform.serving.record_source import FileRecordSource, RecordSource, registry_source
from tl_platform.serving.request_parsing import (
    EVENT_TIME_FORMAT,
    EVENT_TIME_HEADER,
    MAX_EVENT_TIME_CHARS,
    ApiError,
    event_time,
    field_name,
    parse_body,
)
from tl_platform.serving.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    Prediction,
    PredictResponse,
    ReadyResponse,
    bounded_predict_request,
)
from tl_platform.serving.service import PredictionService
from tl_platform.serving.text_retention import TextRetention

logger = logging.getLogger(__name__)
ENDPOINTS = frozenset({"/predict", "/feedback", "/healthz", "/readyz", "/metrics"})
FEEDBACK_BODY_BYTES = 65_536  # a feedback body is a request id, an index, a label and a number
MODEL_FAILED_MESSAGE = "model: prediction failed (the details are in the server's log)"


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
        self.service.close()
        self.log.close()


def record_source(config: ServingConfig) -> RecordSource:
    """The record file, or the registered model's record and versions (downloaded into ``model_cache``)."""
    if config.deployment is not None:
        return FileRecordSource(config.deployment)
    assert config.registry_model is not None and config.tracking_uri is not None  # ServingConfig checks both
    return registry_source(config.registry_model, config.tracking_uri, config.model_cache)


def build_runtime(config: ServingConfig, loader: ModelLoader = load_variant, table_prefix: str = "") -> ServingRuntime:
    """Open the log (migrating it, or refusing a stale schema with ``migrate_log`` off), load the deployment
    (raising if it cannot be served) and wire the parts; nothing runs until ``start``."""
    metrics = ServingMetrics()
    # the log first: a --no-migrate replica on a stale schema refuses before spending time loading models
    log = open_with_retry(
        lambda: PredictionLog(
            config.log_url,
            table_prefix,
            config.log_max_rows_per_commit,
            on_commit=metrics.observe_commit,
            sqlite_synchronous=config.sqlite_synchronous,
            max_pending_rows=config.max_pending_log_rows,
            migrate=config.migrate_log,
            connect_timeout_s=config.log_connect_timeout_s,
            statement_timeout_s=config.log_statement_timeout_s,
        ),
        config.log_start_wait_s,
        sa.make_url(config.log_url).render_as_string(hide_password=True),
    )
    try:
        return _wire(config, loader, metrics, log)
    except BaseException:
        log.close()
        raise


def _wire(config: ServingConfig, loader: ModelLoader, metrics: ServingMetrics, log: PredictionLog) -> ServingRuntime:
    def on_reload(live: LiveDeployment | None, error: str | None) -> None:
        metrics.reloads.labels("failed" if live is None else "challenger_dropped" if error else "ok").inc()
        metrics.deployment_degraded.set(1 if error else 0)
        if live is not None:
            metrics.model_info.clear()
            metrics.model_info.labels("champion", live.champion.version, live.champion.precision).set(1)
            if live.challenger is not None:
                metrics.model_info.labels("challenger", live.challenger.version, live.challenger.precision).set(1)

    watcher = DeploymentWatcher(record_source(config), loader, config.intra_op_threads, config.reload_interval_s, on_reload)
    watcher.load()
    batcher = DynamicBatcher(
        config.max_batch_size, config.max_wait_ms, config.batch_workers, config.bucket_edges,
        on_batch=metrics.observe_batch, on_depth=metrics.queue_depth.set,
        max_queued_texts=config.max_queued_texts, on_dropped=metrics.texts_dropped.inc,
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
        body = ErrorResponse(error=error.details[0].message, errors=error.details, errors_omitted=error.omitted)
        return JSONResponse(status_code=error.status, content=body.model_dump(), headers=error.headers)

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
        field = field_name(tuple(first["loc"]))
        return respond_error(request, ApiError(422, field, str(first["type"]), f"{field}: {first['msg']}"))

    def count_refusal(path: str, rule: str) -> None:
        metrics.errors.labels(path if path in ENDPOINTS else "other", rule).inc()

    # innermost first: the counter, outermost, also counts the body limit's refusals
    limits = BodyLimits({"/predict": config.max_body_bytes, "/feedback": FEEDBACK_BODY_BYTES})
    app.add_middleware(BodyLimitMiddleware, limits=limits, on_refused=count_refusal)
    app.add_middleware(RequestCounter, metrics=metrics)
    predict_request = bounded_predict_request(
        config.max_texts_per_request, config.max_text_chars if config.on_overlong == "reject" else None
    )

    def log_unavailable(err: Exception, what: str) -> ApiError:
        logger.error("%s: the prediction log is unavailable", what, exc_info=err)  # the cause, for operators only
        return ApiError(503, "prediction_log", "log_available", UNAVAILABLE_MESSAGE,
                        headers={"Retry-After": str(RETRY_AFTER_S)})

    in_flight = InFlightLimit(config.max_in_flight)
    log_probe = LogProbe(lambda: runtime.log.ping(), config.log_connect_timeout_s + config.log_statement_timeout_s)

    def shed(reason: ShedReason, detail: str = "") -> ApiError:
        metrics.shed.labels(reason).inc()
        return shed_error(reason, detail)

    @app.post(
        "/predict", response_model=PredictResponse, responses=_errors(400, 413, 422, 429, 500, 503),
        openapi_extra={**_body_schema(predict_request), "parameters": [_EVENT_TIME_PARAMETER]},
        summary="Classify one text (text) or a batch (texts); unit_id pins the A/B variant",
    )
    async def predict(request: Request, background: BackgroundTasks) -> PredictResponse:
        # refused before the body is parsed: a shed request should cost the event loop as little as possible
        if not in_flight.try_enter():
            raise shed("in_flight", str(config.max_in_flight))
        metrics.in_flight.set(in_flight.current)
        try:
            return await answer(request, background, time.monotonic() + config.request_timeout_s)
        finally:
            in_flight.leave()
            metrics.in_flight.set(in_flight.current)

    async def answer(request: Request, background: BackgroundTasks, deadline: float) -> PredictResponse:
        when = event_time(request, config.accept_event_time)
        body = await parse_body(request, predict_request)  # count and (rejecting) length bounded by the schema
        if config.require_unit_id and body.unit_id is None and (experiment := runtime.service.splitting()) is not None:
            raise ApiError(422, "unit_id", "required_in_experiment",
                           f"unit_id: required while experiment {experiment} splits traffic (the server runs with "
                           "require_unit_id); send the caller's user, session or tenant id")
        texts = body.all_texts()
        truncated = [len(text) > config.max_text_chars for text in texts]  # only with on_overlong="truncate"
        texts = [text[: config.max_text_chars] for text in texts]
        try:
            result, job = await runtime.service.predict(texts, truncated, body.unit_id, body.attributes, when, deadline)
        except QueueTooSlowError as err:
            raise shed("queue_time", str(err).removeprefix("batching queue: ")) from err
        except QueueFullError as err:
            raise shed("queue_full", str(err).removeprefix("batching queue: ")) from err
        except DeadlineExceededError as err:
            raise shed("deadline", f"{config.request_timeout_s:g}") from err
        except LogBacklogError as err:
            logger.warning("predict: %s", err)
            raise shed("log_backlog") from err
        except LogUnavailableError as err:
            raise log_unavailable(err, "predict") from err
        except Exception as err:  # 500 with a generic message: the exception's text stays in the server's log
            logger.exception("predict failed")
            raise ApiError(500, "model", "inference", MODEL_FAILED_MESSAGE) from err
        if job is not None:
            background.add_task(runtime.service.shadow.submit, job)  # after the reply is sent
        return PredictResponse(
            request_id=result.request_id, variant=result.variant, model_version=result.model_version,
            latency_ms=result.latency_ms,
            predictions=[Prediction(label=p.label, label_name=p.label_name, confidence=p.confidence,
                                    probabilities=p.probabilities, truncated=p.truncated) for p in result.predictions],
        )

    @app.post(
        "/feedback", response_model=FeedbackResponse, responses=_errors(400, 404, 409, 413, 422, 503),
        openapi_extra={**_body_schema(FeedbackRequest), "parameters": [_EVENT_TIME_PARAMETER]},
        summary="The true label or a business outcome of an answered prediction, joined by request_id",
    )
    async def feedback(request: Request) -> FeedbackResponse:
        when = event_time(request, config.accept_event_time)
        body = await parse_body(request, FeedbackRequest)
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
        except sa.exc.SQLAlchemyError as err:  # down, hung past its timeout: IntegrityError was handled inside
            raise log_unavailable(err, "feedback") from err
        return FeedbackResponse(request_id=body.request_id, item_index=body.item_index)

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=ReadyResponse, responses=_errors(503),
             summary="Readiness: a deployment is loaded and watched, the log answers and its writer runs")
    async def readyz() -> ReadyResponse:
        watcher, log = runtime.watcher, runtime.log
        if not watcher.loaded:
            raise ApiError(503, "models", "deployment_loaded", f"models: no deployment loaded from {watcher.where}")
        if not watcher.watching:
            raise ApiError(503, "deployment_watcher", "watcher_running",
                           "deployment_watcher: not running, so record changes would not be served")
        if not log.writer_alive:  # a commit hung past its deadline, the thread restarting after it died, or gave up
            raise ApiError(503, "prediction_log", "writer_running",
                           f"prediction_log: the log writer is not running ({log.writer_state})")
        try:  # bounded by the connect and statement timeouts, even on a backend that hangs
            await log_probe.check()
        except Exception as err:
            raise log_unavailable(err, "readyz") from err
        live = watcher.current
        record = live.record
        return ReadyResponse(
            status="ready", champion_version=live.champion.version,
            challenger_version=live.challenger.version if live.challenger is not None else None,
            challenger_share=record.challenger_share, shadow=record.shadow, deployment_problem=watcher.problem,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
