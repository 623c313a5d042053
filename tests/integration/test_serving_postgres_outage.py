"""A Postgres outage under load, over HTTP: the real server process on a tiny bundle, its prediction log on a
throwaway Postgres cluster of the test's own (PostgreSQL 15 binaries, initdb into a temporary folder).

Client threads send ``/predict`` steadily through two faults. First the cluster hangs (every Postgres process
SIGSTOPped: a frozen host, or a partition that drops packets), which no server-side ``statement_timeout`` can
end: the server's commit deadline (connect + statement timeout, 2 + 1 s here) fails the waiting requests and
every request answers within it, and ``/readyz`` too. Then the cluster is stopped (``pg_ctl stop -m fast``) and
started again on the same port: refused connections fail at once. While the log is hung or down every request
is answered 503 with the generic message (no SQL, no parameters, no text) and ``/readyz`` is 503; once it is
back the server serves again by itself (no restart) within RECOVERY_BOUND_S; and every request answered 200,
before, during or after, is in the log. About 30 s on 2 cores once the session's bundles are built.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.server_process import free_port, start_server
from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.serving.log_availability import UNAVAILABLE_MESSAGE

pytestmark = pytest.mark.integration
__all__ = ["serving_bundles"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLIENTS = 3
WARM_S = 2.0  # load before the faults
FREEZE_S = 6.0  # Postgres hung
OUTAGE_S = 4.0  # Postgres down
AFTER_S = 2.0  # load once service resumed
RECOVERY_BOUND_S = 10.0  # from Postgres answering again to the server answering 200 and ready
CONNECT_TIMEOUT_S, STATEMENT_TIMEOUT_S = 2, 1  # the server's; a commit's deadline is their sum
ANSWER_BOUND_S = CONNECT_TIMEOUT_S + STATEMENT_TIMEOUT_S + 1.5  # the longest any answer may take, hung or down
TEXT = "the screen is sharp and the battery lasts"
LEAKS = ("INSERT", "SELECT", "psycopg", "sqlalchemy", "predictions", "127.0.0.1", TEXT)


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder on a free port, trust auth, run as the ``postgres`` OS user
    when the tests run as root (initdb and postgres refuse root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tlp-pg-"))  # under /tmp: pytest's folders are root's alone
        self.data = self.root / "data"
        self.as_user: list[str] = []
        self.frozen: list[int] = []
        if os.geteuid() == 0:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, -1)
            self.as_user = [_runuser(), "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(PG_BIN / tool), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def freeze(self) -> None:
        """SIGSTOP the postmaster (no new connections), then every process it started (open connections hang)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGSTOP)
        self.frozen = [postmaster]
        listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True)
        for pid in map(int, listed.stdout.split()):
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    def thaw(self) -> None:
        for pid in reversed(self.frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def remove(self) -> None:
        self.thaw()
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _runuser() -> str:
    """runuser lives in /usr/sbin, which a minimal PATH (a fresh shell, CI's env -i) may leave out."""
    for candidate in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if candidate and Path(candidate).is_file():
            return candidate
    return "runuser"


def _skip_reason() -> str | None:
    missing = [tool for tool in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / tool).is_file()]
    if missing:
        return f"PostgreSQL 15 binaries not found: {', '.join(str(PG_BIN / t) for t in missing)}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run initdb and postgres as"
        if not Path(_runuser()).is_file():
            return "running as root without runuser (util-linux) to run initdb and postgres as the postgres user"
    return None


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when sent
    received: float
    status: int
    body: str
    request_id: str | None
    retry_after: str | None


class Load:
    """CLIENTS threads posting /predict back to back, and one polling /readyz, until ``stop``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[Answer] = []
        self.ready: list[Answer] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]
        self._threads.append(threading.Thread(target=self._readiness))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _call(self, http: httpx.Client, method: str, path: str, **kwargs: object) -> Answer | None:
        sent = time.monotonic()
        try:
            response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as err:  # the server must never drop a connection: recorded, then asserted
            with self._lock:
                self.errors.append(f"{path}: {type(err).__name__}: {err}")
            return None
        request_id = response.json().get("request_id") if response.status_code == 200 and path == "/predict" else None
        return Answer(sent, time.monotonic(), response.status_code, response.text, request_id,
                      response.headers.get("retry-after"))

    def _client(self, client: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                answer = self._call(http, "POST", "/predict", json={"text": f"{TEXT} {client}-{i}"})
                if answer is not None:
                    with self._lock:
                        self.answers.append(answer)
                time.sleep(0.01)

    def _readiness(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self._stop.is_set():
                answer = self._call(http, "GET", "/readyz")
                if answer is not None:
                    with self._lock:
                        self.ready.append(answer)
                time.sleep(0.1)

    def last(self) -> tuple[Answer | None, Answer | None]:
        with self._lock:
            return (self.answers[-1] if self.answers else None), (self.ready[-1] if self.ready else None)


def _await_service(load: Load, since: float) -> float:
    """When a /predict and a /readyz sent after ``since`` were both answered 200 (at most RECOVERY_BOUND_S)."""
    while time.monotonic() - since < RECOVERY_BOUND_S:
        predict, ready = load.last()
        if (predict is not None and predict.sent > since and predict.status == 200
                and ready is not None and ready.sent > since and ready.status == 200):
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"no 200 and ready within {RECOVERY_BOUND_S:g} s of Postgres answering again")


def _within(answers: list[Answer], start: float, end: float) -> list[Answer]:
    """Answers to requests sent at or after ``start`` and answered by ``end``."""
    return [a for a in answers if a.sent >= start and a.received <= end]


def test_a_postgres_outage_is_503_until_it_returns_and_every_answer_is_logged(
    postgres: ThrowawayPostgres, serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    began = time.monotonic()
    deployment = write_record(tmp_path / "deployment.json", serving_bundles.exported, version="1")
    port = free_port()
    server = start_server(deployment, postgres.url, port, tmp_path, "--log-connect-timeout-s", str(CONNECT_TIMEOUT_S),
                          "--log-statement-timeout-s", str(STATEMENT_TIMEOUT_S))
    server_log = tmp_path / f"server-{port}.log"
    try:
        with Load(f"http://127.0.0.1:{port}") as load:
            time.sleep(WARM_S)
            try:
                postgres.freeze()
                # from here every Postgres process is stopped: while the children were being stopped one by
                # one, a backend not yet stopped could still commit (seen under load: three 200s)
                frozen = time.monotonic()
                time.sleep(FREEZE_S)
            finally:
                postgres.thaw()
            thawed = time.monotonic()
            thaw_recovered = _await_service(load, thawed)
            time.sleep(1.0)
            stopping = time.monotonic()
            postgres.stop()
            down = time.monotonic()
            time.sleep(OUTAGE_S)
            restarting = time.monotonic()
            postgres.start()
            back = time.monotonic()
            recovered = _await_service(load, back)
            time.sleep(AFTER_S)
    finally:
        server.terminate()
        server.wait(15)
    answers, ready = load.answers, load.ready
    assert load.errors == [], load.errors[:5]

    def codes(chosen: list[Answer]) -> dict[int, int]:
        return dict(Counter(a.status for a in chosen))

    def slowest(chosen: list[Answer]) -> float:
        return max((a.received - a.sent for a in chosen), default=0.0)

    before = [a for a in answers if a.received < frozen]
    hung = _within(answers, frozen, thawed)  # sent and answered while Postgres was frozen
    hung_ready = _within(ready, frozen + CONNECT_TIMEOUT_S + STATEMENT_TIMEOUT_S, thawed)
    overlapping_freeze = [a for a in answers + ready if a.sent < thawed and a.received > frozen]
    outage = _within(answers, down, restarting)
    outage_ready = _within(ready, down, restarting)
    after = _within(answers, recovered, float("inf"))
    print(f"\n{len(answers)} predict requests in {time.monotonic() - began:.1f} s (server start included); before "
          f"{codes(before)}; Postgres hung {FREEZE_S:g} s: {len(hung)} predict {codes(hung)}, slowest "
          f"{slowest(hung):.2f} s, readyz {codes(hung_ready)}, slowest answer overlapping the freeze "
          f"{slowest(overlapping_freeze):.2f} s; resumed {thaw_recovered - thawed:.2f} s after the thaw; Postgres "
          f"down {restarting - down:.1f} s: {len(outage)} predict {codes(outage)}, slowest {slowest(outage) * 1000:.0f} "
          f"ms, readyz {codes(outage_ready)}; pg_ctl stop {down - stopping:.2f} s, start {back - restarting:.2f} s; "
          f"resumed {recovered - back:.2f} s after Postgres accepted connections; after {codes(after)}")

    assert len(before) >= 10 and {a.status for a in before} == {200}
    # hung: every answer within the commit deadline (plus scheduling), and never a 200 while nothing can commit
    assert len(hung) >= 10 and {a.status for a in hung} == {503}, codes(hung)
    assert slowest(overlapping_freeze) < ANSWER_BOUND_S
    assert len(hung_ready) >= 5 and {a.status for a in hung_ready} == {503}
    # down: refused connections fail at once, not at a timeout
    assert len(outage) >= 20 and {a.status for a in outage} == {503}, codes(outage)
    assert slowest(outage) < 1.0
    assert len(outage_ready) >= 5 and {a.status for a in outage_ready} == {503}
    assert all(a.retry_after == "1" for a in hung + outage)
    for answer in hung + outage + hung_ready + outage_ready:
        assert UNAVAILABLE_MESSAGE in answer.body or "the log writer is not running (stalled)" in answer.body, answer.body
        assert all(leak not in answer.body for leak in LEAKS), answer.body
    assert len(after) >= 10 and {a.status for a in after} == {200}  # resumed by itself, and stays up
    server_output = server_log.read_text()
    assert "the prediction log is unavailable" in server_output  # the causes went to the server's log
    assert "has run past its deadline of 3 s" in server_output and "the writer takes rows again" in server_output

    answered = [a.request_id for a in answers if a.status == 200]
    assert len(set(answered)) == len(answered)
    engine = sa.create_engine(postgres.url)
    with engine.connect() as connection:
        logged = {r for (r,) in connection.execute(sa.text("SELECT request_id FROM predictions WHERE role = 'served'"))}
    engine.dispose()
    missing = [rid for rid in answered if rid not in logged]
    assert missing == [], f"{len(missing)} of {len(answered)} requests answered 200 are not in the log"
    print(f"all {len(answered)} answered requests are logged ({len(logged)} served rows; "
          f"{len(logged) - len(answered)} logged requests were answered 503)")
