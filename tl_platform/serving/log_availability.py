"""The prediction log as a dependency that can fail: the error callers get, and opening it with retries.

While the log cannot commit, a request cannot be answered (its rows must be durable before the reply), so the
API answers 503 with a generic message: the driver's own message can carry SQL parameters, which in a group
commit are other callers' rows, so it goes to the server's log only. At start-up the backend may still be
coming up (compose, Kubernetes): ``open_with_retry`` waits for it with a bounded exponential back-off instead
of exiting with a traceback. ``/readyz`` checks the log through a ``LogProbe``: one ping at a time, each wait
bounded, since a backend that hangs (frozen, packets dropped) never trips its own statement timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

logger = logging.getLogger(__name__)
T = TypeVar("T")

UNAVAILABLE_MESSAGE = "prediction_log: the prediction log is unavailable; retry later (details are in the server's log)"
RETRY_AFTER_S = 1  # the Retry-After of a 503 while the log is down: a commit retries every request's rows anyway
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


class LogUnavailableError(RuntimeError):
    """The prediction log could not take or confirm a write (backend down, hung past its timeout, writer dead).
    Its message is generic; the cause is chained and logged where it happened."""


def open_with_retry(
    open_log: Callable[[], T],
    wait_s: float,
    describe: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``open_log()``, retried on connection failures (``sqlalchemy.exc.OperationalError``, ``InterfaceError``)
    with a back-off from 0.5 s doubling to 8 s, for at most ``wait_s`` seconds; then LogUnavailableError naming
    ``describe`` (the URL without its password), the time waited and the last error. Other errors (a stale schema,
    a bad URL) are not retried: waiting would not fix them."""
    deadline = clock() + wait_s
    delay = FIRST_BACKOFF_S
    attempts = 0
    while True:
        attempts += 1
        try:
            return open_log()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
            cause = str(err.orig if err.orig is not None else err).strip().splitlines()[0]
            left = deadline - clock()
            if left <= 0:
                raise LogUnavailableError(
                    f"prediction log {describe}: not reachable after {attempts} attempts over {wait_s:g} s "
                    f"(ServingConfig.log_start_wait_s); last error: {cause}"
                ) from err
            pause = min(delay, left)
            logger.warning("prediction log %s not reachable (attempt %d): %s; retrying in %.1f s",
                           describe, attempts, cause, pause)
            sleep(pause)
            delay = min(delay * 2, MAX_BACKOFF_S)


class LogProbe:
    """The readiness check of the log: ``check()`` runs ``ping`` on a worker thread and waits at most
    ``timeout_s`` (then TimeoutError); a ping still running is awaited again instead of starting another, so a
    hung backend holds one thread however often the probe asks, not one per probe."""

    def __init__(self, ping: Callable[[], None], timeout_s: float) -> None:
        self.ping = ping
        self.timeout_s = timeout_s
        self._running: asyncio.Future[None] | None = None

    async def check(self) -> None:
        running = self._running
        if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
            running = self._running = asyncio.ensure_future(asyncio.to_thread(self.ping))
            running.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning
        await asyncio.wait_for(asyncio.shield(running), self.timeout_s)
