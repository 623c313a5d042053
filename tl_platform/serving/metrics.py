"""Prometheus metrics of one serving app, on its own registry (so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tl_platform.serving.admission import SHED_REASONS
from tl_platform.serving.batching import BatchStats
from tl_platform.serving.prediction_log import CommitStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "tlp_request_latency_seconds", "End-to-end latency of answered predict requests", ["variant"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter("tlp_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r)
        self.errors = Counter("tlp_errors", "Requests answered with an error, by endpoint and rule broken", ["endpoint", "rule"], registry=r)
        self.predictions = Counter("tlp_predictions", "Texts scored for callers, by variant and model version", ["variant", "version"], registry=r)
        self.batch_size = Histogram("tlp_batch_size", "Texts per model call", buckets=SIZE_BUCKETS, registry=r)
        self.batch_padding = Counter("tlp_batch_padding_tokens", "Padding tokens computed over (waste)", registry=r)
        self.batch_seconds = Histogram("tlp_batch_inference_seconds", "Model call time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tlp_queue_depth", "Texts waiting for a batch", registry=r)
        self.shadow = Counter("tlp_shadow", "Shadow scorings by outcome (ok, failed, dropped)", ["outcome"], registry=r)
        self.shadow_queue_depth = Gauge("tlp_shadow_queue_depth", "Shadow requests waiting", registry=r)
        self.shadow_latency = Histogram("tlp_shadow_latency_seconds", "Challenger latency in shadow mode", buckets=LATENCY_BUCKETS, registry=r)
        self.log_commit_rows = Histogram("tlp_log_commit_rows", "Rows per group commit of the prediction log", buckets=SIZE_BUCKETS, registry=r)
        self.log_commit_seconds = Histogram("tlp_log_commit_seconds", "Time of one group commit", buckets=LATENCY_BUCKETS, registry=r)
        self.texts_purged = Counter("tlp_log_texts_purged", "Log rows whose text the retention purge removed", registry=r)
        self.text_purges = Counter("tlp_log_text_purges", "Retention purges by outcome (ok, failed)", ["outcome"], registry=r)
        self.reloads = Counter("tlp_deployment_reloads", "Deployment record reloads by outcome (ok, failed, challenger_dropped)",
                               ["outcome"], registry=r)
        self.deployment_degraded = Gauge(
            "tlp_deployment_degraded",
            "1 while the deployment record on disk is not what serves (its last load failed, or its challenger was dropped); alert on it",
            registry=r,
        )
        self.shed = Counter(
            "tlp_requests_shed",
            "Predict requests refused under overload, by reason (in_flight, queue_full, queue_time: 429; log_backlog, deadline: 503)",
            ["reason"], registry=r,
        )
        for reason in SHED_REASONS:  # every reason exported from the start, so a rate() sees the first one
            self.shed.labels(reason)
        self.in_flight = Gauge("tlp_in_flight", "Predict requests being worked on", registry=r)
        self.texts_dropped = Counter(
            "tlp_texts_dropped", "Queued texts dropped unscored: their request gave up or passed its deadline", registry=r
        )
        self.model_info = Gauge("tlp_model_info", "1 for each variant and version being served", ["variant", "version", "precision"], registry=r)

    def observe_batch(self, stats: BatchStats, seconds: float) -> None:
        self.batch_size.observe(stats.size)
        self.batch_padding.inc(stats.padding_tokens)
        self.batch_seconds.observe(seconds)

    def observe_commit(self, stats: CommitStats) -> None:
        self.log_commit_rows.observe(stats.rows)
        self.log_commit_seconds.observe(stats.seconds)

    def observe_purge(self, purged: int | None) -> None:
        """Rows purged by one retention run, or None when it failed."""
        self.text_purges.labels("failed" if purged is None else "ok").inc()
        if purged:
            self.texts_purged.inc(purged)

    def render(self) -> bytes:
        return generate_latest(self.registry)
