"""The serving API the story's traffic goes through: a real `tl_platform.serving` process on a free local port.

It accepts the simulated event time of each request (``--accept-event-time``) and watches the deployment
record, so an A/B split or a promotion written by a Dagster run is what it serves a moment later. It is started
in its own session (Ctrl-C in the terminal stops the story, which then stops it) and, on Linux, dies with the
story if the story is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType

import httpx
import sqlalchemy as sa

from tl_platform.serving.deployment import read_deployment_record
from tl_platform.serving.log_schema import log_tables
from tl_platform.simulation.traffic import DayOutcome, ProgressHook, TrafficDay, replay_day

READY_TIMEOUT_S = 120.0
RELOAD_TIMEOUT_S = 60.0


class ServingError(RuntimeError):
    """The serving process did not start, stopped, or never served what the deployment record says."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError):  # no such libc: the story's own exit still stops the server
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServingProcess:
    def __init__(self, deployment: Path, log_url: str, directory: Path) -> None:
        self.deployment, self.log_url = deployment, log_url
        self.log_path = directory / "serving.log"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client | None = None

    def __enter__(self) -> ServingProcess:
        command = [sys.executable, "-m", "tl_platform.serving", "--deployment", str(self.deployment),
                   "--log-url", self.log_url, "--port", str(self.port), "--accept-event-time",
                   "--reload-interval-s", "0.5"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.client = httpx.Client(base_url=self.base_url, timeout=60)
        self._wait(lambda ready: True, READY_TIMEOUT_S, "to become ready")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.client is not None:
            self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def replay(self, traffic: TrafficDay, seed: int, concurrency: int, on_progress: ProgressHook) -> DayOutcome:
        assert self.client is not None
        self._require_running()
        return replay_day(self.client, traffic, seed, concurrency, on_progress)

    def versions(self) -> dict[str, object]:
        """What serves now: champion and challenger versions, the challenger's share, shadow or not."""
        assert self.client is not None
        response = self.client.get("/readyz")
        if response.status_code != 200:
            raise ServingError(f"the serving API is not ready: {response.text[:300]} (its log: {self.log_path})")
        found: dict[str, object] = response.json()
        return found

    def wait_for_record(self) -> None:
        """Until the server serves what the deployment record on disk says (versions, split, shadow).

        Traffic sent before the watcher reloads a changed record is routed by the old one: after a shadow
        phase, a unit could meet the champion and then the challenger, which the experiment counts as a
        broken split (measured: 5 of 338 units on the first split day, verdict invalid)."""
        record = read_deployment_record(self.deployment)
        wanted = {"champion_version": record.champion.version,
                  "challenger_version": record.challenger.version if record.challenger is not None else None,
                  "challenger_share": record.challenger_share, "shadow": record.shadow}

        def matches(ready: dict[str, object]) -> bool:
            return all(ready.get(key) == value for key, value in wanted.items())

        self._wait(matches, RELOAD_TIMEOUT_S, f"to serve the deployment record ({wanted})")

    def _wait(self, matches: Callable[[dict[str, object]], bool], timeout_s: float, what: str) -> None:
        assert self.client is not None
        deadline, last = time.monotonic() + timeout_s, "no answer"
        while time.monotonic() < deadline:
            self._require_running()
            try:
                response = self.client.get("/readyz", timeout=2)
                last = response.text[:300]
                if response.status_code == 200 and matches(response.json()):
                    return
            except httpx.TransportError as err:
                last = f"{type(err).__name__}"
            time.sleep(0.2)
        raise ServingError(f"the serving API on port {self.port} did not come {what} in {timeout_s:.0f} s "
                           f"(last answer: {last}; its log: {self.log_path})")

    def _require_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServingError(f"the serving API exited with code {self.process.returncode}; its log: {self.log_path}")


def purge_day(log_url: str, day: date, table_prefix: str = "") -> int:
    """Delete one day's logged requests and their feedback: a day whose replay was interrupted is sent again
    whole, and must not count twice. Returns the number of requests removed."""
    tables = log_tables(table_prefix)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    window = sa.and_(tables.predictions.c.ts >= start, tables.predictions.c.ts < start + timedelta(days=1))
    engine = sa.create_engine(log_url)
    try:
        with engine.begin() as connection:
            if not sa.inspect(connection).has_table(tables.predictions.name):
                return 0
            ids = sa.select(tables.predictions.c.request_id).where(window)
            connection.execute(sa.delete(tables.feedback).where(tables.feedback.c.request_id.in_(ids)))
            removed = connection.execute(sa.select(sa.func.count(sa.distinct(tables.predictions.c.request_id)))
                                         .where(window)).scalar_one()
            connection.execute(sa.delete(tables.predictions).where(window))
            return int(removed)
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

