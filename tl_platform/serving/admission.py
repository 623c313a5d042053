"""Admission under overload: the concurrency limit of ``POST /predict`` and the refusals that shed load.

Every limit answers at once rather than queueing without bound: a request past ``max_in_flight`` gets 429,
one whose texts do not fit the batching queue 429, one that would wait past its deadline behind the queued
work 429, one the prediction log cannot take (its pending queue full)
503, one past its deadline 503; each with ``Retry-After`` and counted in ``tlp_requests_shed{reason}``. Latency
of the accepted requests then stays near the unloaded one, since each waits behind a bounded amount of work.
"""

from __future__ import annotations

from typing import Literal

from tl_platform.serving.request_parsing import ApiError

RETRY_AFTER_S = 1  # whole seconds (HTTP's Retry-After): a shed request is cheap to retry once the burst passes
ShedReason = Literal["in_flight", "queue_full", "queue_time", "log_backlog", "deadline"]
SHED_REASONS: tuple[ShedReason, ...] = ("in_flight", "queue_full", "queue_time", "log_backlog", "deadline")


class InFlightLimit:
    """Counts requests being worked on; ``try_enter`` refuses past ``limit``. Used from the event loop only,
    so a plain counter suffices (no await between the check and the increment)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self.current = 0

    def try_enter(self) -> bool:
        if self.current >= self.limit:
            return False
        self.current += 1
        return True

    def leave(self) -> None:
        if self.current <= 0:
            raise RuntimeError("InFlightLimit.leave without a matching try_enter")
        self.current -= 1


def shed_error(reason: ShedReason, detail: str = "") -> ApiError:
    """The refusal of one shed request: 429 while the server is past its own limits (the caller should slow
    down), 503 while a dependency is behind or the request ran out of time."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if reason == "in_flight":
        return ApiError(429, "request", "max_in_flight",
                        f"request: the server is at its limit of {detail} requests in flight; retry after "
                        f"{RETRY_AFTER_S} s", headers=retry)
    if reason == "queue_full":
        return ApiError(429, "request", "max_queued_texts",
                        f"request: the batching queue is full ({detail}); retry after {RETRY_AFTER_S} s", headers=retry)
    if reason == "queue_time":
        return ApiError(429, "request", "queue_time",
                        f"request: {detail}; retry after {RETRY_AFTER_S} s", headers=retry)
    if reason == "log_backlog":
        return ApiError(503, "prediction_log", "max_pending_log_rows",
                        f"prediction_log: too many rows wait for a commit; retry after {RETRY_AFTER_S} s", headers=retry)
    return ApiError(503, "request", "request_timeout",
                    f"request: not answered within its deadline of {detail} s (request_timeout_s); retry after "
                    f"{RETRY_AFTER_S} s", headers=retry)
