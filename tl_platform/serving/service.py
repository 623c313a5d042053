"""One prediction request, start to finish: route, tokenise, batch, score, log (group commit), queue the shadow.

Kept free of HTTP so it can be driven directly; ``app.py`` maps its results and errors to responses. Load is
shed by raising: ``QueueFullError`` (the batching queue), ``DeadlineExceededError`` (tokenising, queueing and
inference took past the request's deadline; its queued texts are dropped unscored), ``LogBacklogError`` (the
log's pending queue). Tokenising a request of more than ``INLINE_TOKENIZE_CHARS`` characters runs on a thread
pool, so a request of long texts does not stall the event loop (every other request, ``/healthz`` included).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from tl_platform.serving.batching import DeadlineExceededError, DynamicBatcher, ItemOutput
from tl_platform.serving.deployment_watcher import DeploymentWatcher
from tl_platform.serving.metrics import ServingMetrics
from tl_platform.serving.model import ServingModel, TokenizedText, fewest_tokens, softmax
from tl_platform.serving.prediction_log import SERVED, SHADOW, PredictionLog, PredictionRow
from tl_platform.serving.routing import RoutingContext, Variant, assign_variant
from tl_platform.serving.shadow import ShadowJob, ShadowScorer

INLINE_TOKENIZE_CHARS = 2000  # below this, tokenising (tens of microseconds) costs less than a hop to a thread
TOKENIZE_THREADS = 2


@dataclass(frozen=True)
class ScoredText:
    label: str
    label_name: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool


@dataclass(frozen=True)
class PredictResult:
    request_id: str
    variant: Variant
    model_version: str
    predictions: tuple[ScoredText, ...]
    latency_ms: float


def score_rows(
    model: ServingModel,
    tokens: Sequence[TokenizedText],
    logits: np.ndarray,
    embeddings: np.ndarray,
) -> tuple[list[ScoredText], np.ndarray]:
    """Labels, confidences and probabilities of each text, and the monitored projection of its embedding."""
    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    projection = model.project(np.asarray(embeddings, dtype=np.float64))
    scored = []
    for row in probabilities:
        best = int(np.argmax(row))
        scored.append(
            ScoredText(
                label=model.labels[best],
                label_name=model.label_names[best],
                confidence=float(row[best]),
                probabilities={label: float(p) for label, p in zip(model.labels, row, strict=True)},
                truncated=False,
            )
        )
    return scored, projection


def log_rows(
    request_id: str, role: str, unit_id: str | None, variant: str, model: ServingModel, tokens: Sequence[TokenizedText],
    texts: Sequence[str] | None, truncated: Sequence[bool], routing: RoutingContext, latency_ms: float,
    scored: Sequence[ScoredText] | None, projection: np.ndarray | None, error: str | None = None,
    ts: datetime | None = None, attributes: Mapping[str, str] | None = None,
) -> list[PredictionRow]:
    """The log rows of one request's texts; ``texts`` None when text capture is off (the features are kept).

    ``ts`` is the request's event time when the caller gave one (a replay), else the server's clock now.
    """
    now = ts if ts is not None else datetime.now(UTC)
    rows = []
    for index, token in enumerate(tokens):
        result = scored[index] if scored is not None else None
        rows.append(
            PredictionRow(
                request_id=request_id, item_index=index, role=role, ts=now, unit_id=unit_id, variant=variant,
                model_version=model.version,
                label=result.label if result else None,
                confidence=result.confidence if result else None,
                probabilities=result.probabilities if result else None,
                latency_ms=latency_ms, text_chars=token.chars, token_count=token.length,
                unknown_share=token.unknown_share, truncated=bool(truncated[index]),
                projection=tuple(float(v) for v in projection[index]) if projection is not None else (),
                text=texts[index] if texts is not None else None,
                experiment_id=routing.experiment_id, routing_salt=routing.salt,
                challenger_share=routing.challenger_share, error=error, attributes=attributes,
            )
        )
    return rows


@dataclass(frozen=True)
class Route:
    variant: Variant
    model: ServingModel  # the model that answers
    shadow: ServingModel | None  # the challenger to shadow-score with, or None
    routing: RoutingContext


class PredictionService:
    def __init__(
        self,
        watcher: DeploymentWatcher,
        batcher: DynamicBatcher,
        log: PredictionLog,
        metrics: ServingMetrics,
        routing_salt: str,
        shadow_workers: int,
        shadow_queue_size: int,
        capture_text: bool = True,
    ) -> None:
        self.watcher = watcher
        self.batcher = batcher
        self.log = log
        self.metrics = metrics
        self.routing_salt = routing_salt  # the default; a deployment record's own routing_salt takes precedence
        self.capture_text = capture_text
        self._tokenize_pool = ThreadPoolExecutor(TOKENIZE_THREADS, thread_name_prefix="tlp-tokenize")
        self.shadow = ShadowScorer(
            self._score_shadow, shadow_workers, shadow_queue_size,
            on_outcome=self._shadow_outcome, on_depth=metrics.shadow_queue_depth.set,
        )

    def route(self, unit_id: str | None) -> Route:
        """The variant and model that answer this unit, the challenger to shadow-score with, and the split.

        Without a unit id the champion answers: randomising each request would put one caller in both arms.
        """
        live = self.watcher.current
        record = live.record
        routing = RoutingContext(record.routing_salt or self.routing_salt, record.challenger_share, record.experiment_id)
        if record.shadow or live.challenger is None or unit_id is None:
            return Route("champion", live.champion, live.challenger if record.shadow else None, routing)
        variant = assign_variant(routing.salt, unit_id, record.challenger_share)
        return Route(variant, live.challenger if variant == "challenger" else live.champion, None, routing)

    def splitting(self) -> str | None:
        """The experiment id while the deployment splits units between two models (else None)."""
        live = self.watcher.current
        record = live.record
        if live.challenger is None or record.shadow or record.challenger_share <= 0:
            return None
        return record.experiment_id or "(unnamed split)"

    def close(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    async def _tokenize(self, model: ServingModel, texts: Sequence[str]) -> list[TokenizedText]:
        if sum(len(text) for text in texts) <= INLINE_TOKENIZE_CHARS:
            return model.tokenize(texts)
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, model.tokenize, texts)

    async def _infer(self, model: ServingModel, texts: Sequence[str], deadline: float | None) -> tuple[
            list[TokenizedText], list[ItemOutput]]:
        self.batcher.refuse_if_too_slow(fewest_tokens(texts, model.max_length), deadline)  # before tokenising
        tokens = await self._tokenize(model, texts)
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError("the request's deadline passed while its texts were tokenised")
        futures = self.batcher.submit_many(model, [token.input_ids for token in tokens], deadline)  # or QueueFullError
        try:
            if len(futures) == 1:  # the common case, without gather's bookkeeping
                return tokens, [await asyncio.wrap_future(futures[0])]
            return tokens, list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except BaseException:
            for future in futures:  # a queued text of a failed or cancelled request is dropped, not scored
                future.cancel()
            raise

    async def predict(
        self, texts: Sequence[str], truncated: Sequence[bool], unit_id: str | None,
        attributes: Mapping[str, str] | None = None, event_time: datetime | None = None, deadline: float | None = None,
    ) -> tuple[PredictResult, ShadowJob | None]:
        """Score, log (served rows, carrying ``attributes`` and timed ``event_time`` or now) and return the answer
        with the shadow job to run after the reply, if the deployment shadows.

        ``deadline`` (``time.monotonic()`` seconds) bounds tokenising, queueing and inference: past it,
        DeadlineExceededError. Once scored, the request waits for its rows' commit (bounded by the log's statement
        timeout), so a request whose rows are logged is answered.
        """
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        route = self.route(unit_id)
        variant, model = route.variant, route.model
        if deadline is None:
            tokens, outputs = await self._infer(model, texts, None)
        else:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    tokens, outputs = await self._infer(model, texts, deadline)
            except TimeoutError as err:
                raise DeadlineExceededError("the request's deadline passed before it was scored") from err
        scored, projection = score_rows(
            model, tokens, np.stack([o.logits for o in outputs]), np.stack([o.embedding for o in outputs])
        )
        scored = [
            ScoredText(s.label, s.label_name, s.confidence, s.probabilities, bool(cut))
            for s, cut in zip(scored, truncated, strict=True)
        ]
        latency_ms = 1000.0 * (time.perf_counter() - started)
        logged_texts = texts if self.capture_text else None
        rows = log_rows(request_id, SERVED, unit_id, variant, model, tokens, logged_texts, truncated, route.routing,
                        latency_ms, scored, projection, ts=event_time, attributes=attributes)
        await asyncio.wrap_future(self.log.submit(rows))  # group commit: the reply waits until the rows are durable
        self.metrics.predictions.labels(variant, model.version).inc(len(texts))
        self.metrics.request_latency.labels(variant).observe(time.perf_counter() - started)
        result = PredictResult(request_id, variant, model.version, tuple(scored), latency_ms)
        job = None
        if route.shadow is not None:
            job = ShadowJob(request_id, unit_id, tuple(texts), tuple(truncated), route.shadow, route.routing,
                            time.perf_counter(), attributes, event_time)
        return result, job

    def _score_shadow(self, job: ShadowJob) -> None:
        model = job.challenger
        started = time.perf_counter()
        tokens = model.tokenize(job.texts)
        texts = job.texts if self.capture_text else None
        try:
            logits, embeddings = model.infer([t.input_ids for t in tokens])
            scored, projection = score_rows(model, tokens, logits, embeddings)
        except Exception as err:
            latency_ms = 1000.0 * (time.perf_counter() - started)
            rows = log_rows(job.request_id, SHADOW, job.unit_id, "challenger", model, tokens, texts, job.truncated,
                            job.routing, latency_ms, None, None, error=f"{type(err).__name__}: {err}",
                            ts=job.event_time, attributes=job.attributes)
            self.log.submit(rows).result()
            raise  # counted as a failed shadow scoring (and logged with its traceback) by the ShadowScorer
        latency_ms = 1000.0 * (time.perf_counter() - started)
        rows = log_rows(job.request_id, SHADOW, job.unit_id, "challenger", model, tokens, texts, job.truncated,
                        job.routing, latency_ms, scored, projection, ts=job.event_time, attributes=job.attributes)
        self.log.submit(rows).result()

    def _shadow_outcome(self, outcome: str, seconds: float) -> None:
        self.metrics.shadow.labels(outcome).inc()
        if outcome == "ok":
            self.metrics.shadow_latency.observe(seconds)
