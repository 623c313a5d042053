"""The prediction log's group-commit writer: one thread that commits every pending row in one transaction.

Requests hand their rows to ``submit`` and wait on the returned future; the thread takes everything pending (up
to ``max_rows_per_commit`` rows), writes it in one transaction, then resolves the futures, so a request is
answered only once its rows are durable. A failed commit (the backend down, a statement past its timeout) fails
that group's futures with ``LogUnavailableError`` and the writer goes on with the next group.

If something unexpected ends the thread (an error outside the commit: a bug, a ``BaseException``), every
request whose rows were in hand or still queued gets ``LogUnavailableError`` at once (nothing was confirmed, so
nothing is answered as logged), the writer reports not running (``/readyz`` answers 503), ``submit`` fails at
once instead of queueing behind a thread that will never take the rows, and a new thread starts after a back-off
(``WriterRestartPolicy``: 1 s doubling to 30 s). After ``max_restarts`` deaths in a row with no successful
commit between them the writer stays down (the error is logged as critical) until ``start`` is called again.

A backend that hangs instead of refusing (a frozen host, a network partition that drops packets) never trips
the server-side ``statement_timeout``, and an open connection has no connect timeout: the commit would wait for
as long as the hang lasts, and every request behind it too. With ``commit_deadline_s`` a watchdog fails the
waiting requests of a commit that runs past it (``LogUnavailableError``: the rows may still land, so a caller
can get 503 for a logged row, never 200 for an unlogged one), and the writer reports ``stalled`` (not ready,
new rows refused at once) until that commit returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Literal

from tl_platform.serving.log_availability import LogUnavailableError

logger = logging.getLogger(__name__)

WriterState = Literal["idle", "running", "stalled", "restarting", "failed"]
Entry = tuple[list[dict[str, Any]], Future[None]]
_STOP = object()


class LogBacklogError(RuntimeError):
    """The log's pending queue is full (the backend commits slower than requests arrive); nothing was queued."""


@dataclass(frozen=True)
class CommitStats:
    rows: int
    seconds: float


@dataclass(frozen=True)
class WriterRestartPolicy:
    """How the writer thread is restarted after an unexpected death.

    Attributes:
        first_backoff_s: wait before the first restart, in (0, 3600]; each further death in a row doubles it.
        max_backoff_s: the longest wait between a death and its restart, at least ``first_backoff_s``.
        max_restarts: restarts allowed in a row without a successful commit between them, in [0, 1000]; one more
            death and the writer stays down (0: never restart).
    """

    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_restarts: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.first_backoff_s <= 3600:
            raise ValueError(f"WriterRestartPolicy.first_backoff_s must be in (0, 3600] seconds, got {self.first_backoff_s!r}")
        if not self.max_backoff_s >= self.first_backoff_s:
            raise ValueError(f"WriterRestartPolicy.max_backoff_s must be at least first_backoff_s "
                             f"({self.first_backoff_s:g}), got {self.max_backoff_s!r}")
        if not 0 <= self.max_restarts <= 1000:
            raise ValueError(f"WriterRestartPolicy.max_restarts must be an integer in [0, 1000], got {self.max_restarts!r}")

    def backoff_s(self, deaths: int) -> float:
        """The wait before restarting after the ``deaths``-th death in a row (1-based)."""
        return min(self.first_backoff_s * 2.0 ** (deaths - 1), self.max_backoff_s)


def _settle(future: Future[None], error: BaseException | None) -> None:
    """Resolve a caller's future; one its caller cancelled (gone) is left alone instead of ending the writer."""
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


def _unavailable(message: str, cause: BaseException) -> LogUnavailableError:
    error = LogUnavailableError(message)
    error.__cause__ = cause  # for the server's log; the caller's message stays generic
    return error


class GroupCommitWriter:
    """Group-commits rows through ``write(rows)`` (one transaction; raises on failure) on one thread.

    ``state``: ``idle`` (not started, or stopped: submitted rows wait for ``start``), ``running``, ``stalled`` (a
    commit ran past ``commit_deadline_s`` and has not returned), ``restarting`` (the thread died; a new one starts
    after the back-off) or ``failed`` (died ``max_restarts`` + 1 times in a row).
    """

    def __init__(
        self,
        write: Callable[[list[dict[str, Any]]], None],
        max_rows_per_commit: int = 1000,
        max_pending_rows: int = 100_000,
        on_commit: Callable[[CommitStats], None] | None = None,
        restart: WriterRestartPolicy | None = None,
        commit_deadline_s: float | None = None,
    ) -> None:
        if max_pending_rows < 1:
            raise ValueError(f"max_pending_rows must be at least 1, got {max_pending_rows}")
        if commit_deadline_s is not None and not commit_deadline_s > 0:
            raise ValueError(f"commit_deadline_s must be a positive number of seconds or None, got {commit_deadline_s!r}")
        self.write = write
        self.max_rows_per_commit = max_rows_per_commit
        self.max_pending_rows = max_pending_rows
        self.on_commit = on_commit
        self.restart = restart or WriterRestartPolicy()
        self.commit_deadline_s = commit_deadline_s
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.commits = 0
        self.failed_commits = 0
        self.restarts = 0  # threads started after a death
        self.stalls = 0  # commits that ran past their deadline
        self._lock = threading.Lock()  # guards the state, the pending count and queueing against a death's drain
        self._cond = threading.Condition(self._lock)  # wakes the watchdog when a commit begins, or on stop
        self._state: WriterState = "idle"
        self._pending_rows = 0  # rows queued and not yet taken by the thread
        self._deaths_in_a_row = 0
        self._stopping = False
        self._restart_timer: threading.Timer | None = None
        self._in_hand: list[Entry] = []  # the running thread's group
        self._commit_due: float | None = None  # time.monotonic() deadline of the commit in flight (None: none)
        self._watchdog: threading.Thread | None = None
        self._watchdog_idle = False  # waiting with no deadline in view: a commit that begins must wake it

    # -- control -------------------------------------------------------------------------------------------

    @property
    def state(self) -> WriterState:
        return self._state

    @property
    def alive(self) -> bool:
        """The thread runs and takes rows (False before ``start``, while stalled or restarting, and once it gave up)."""
        thread = self.thread
        return self._state == "running" and thread is not None and thread.is_alive()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def start(self) -> None:
        """Start the thread (idle), or start it again after it gave up (failed); otherwise nothing."""
        with self._lock:
            if self._state in ("idle", "failed"):
                self._deaths_in_a_row = 0
                self._launch()
            if self.commit_deadline_s is not None and self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="tlp-log-watchdog", daemon=True)
                self._watchdog.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then end the thread (and cancel a pending restart)."""
        with self._lock:
            self._stopping = True
            thread, watchdog = self.thread, self._watchdog
            if self._state in ("running", "stalled"):
                self.queue.put(_STOP)
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        if watchdog is not None:
            watchdog.join(timeout)
        with self._lock:
            self._watchdog = None
            if self._restart_timer is not None:
                self._restart_timer.cancel()
                self._restart_timer = None
            self.thread = None
            self._state = "idle"
            self._stopping = False

    def _launch(self) -> None:  # under the lock
        self._state = "running"
        self.thread = threading.Thread(target=self._run, name="tlp-log-writer", daemon=True)
        self.thread.start()

    # -- submitting ----------------------------------------------------------------------------------------

    def submit(self, payload: list[dict[str, Any]]) -> Future[None]:
        """Queue rows for the next group commit; see ``PredictionLog.submit``."""
        future: Future[None] = Future()
        with self._lock:
            thread = self.thread
            if self._state in ("stalled", "restarting", "failed") or (
                    self._state == "running" and thread is not None and not thread.is_alive()):
                future.set_exception(LogUnavailableError("the prediction log's writer thread is not running"))
                return future
            if self._pending_rows + len(payload) > self.max_pending_rows:
                future.set_exception(LogBacklogError(
                    f"prediction log: {self._pending_rows} of {self.max_pending_rows} rows wait for a commit, "
                    f"no room for {len(payload)} more"
                ))
                return future
            self._pending_rows += len(payload)
            self.queue.put((payload, future))
        return future

    # -- the thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        in_hand: list[Entry] = []  # the group being committed: a death fails these too
        self._in_hand = in_hand
        try:
            self._loop(in_hand)
        except BaseException as err:  # whatever ended the loop, no caller may wait forever
            self._died(err, in_hand)

    def _loop(self, in_hand: list[Entry]) -> None:
        while True:
            in_hand.clear()
            first = self.queue.get()
            if first is _STOP:
                return
            rows = self._take(first, in_hand)
            stop_after = False
            while rows < self.max_rows_per_commit:
                try:
                    entry = self.queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stop_after = True
                    break
                rows += self._take(entry, in_hand)
            self._commit(in_hand)
            if stop_after:
                return

    def _take(self, entry: Entry, in_hand: list[Entry]) -> int:
        payload, future = entry
        with self._lock:
            self._pending_rows -= len(payload)
        in_hand.append((payload, future))
        return len(payload)

    def _commit(self, group: list[Entry]) -> None:
        rows = [row for entry_rows, _ in group for row in entry_rows]
        started = time.perf_counter()
        try:
            self._begin_commit()
            self.write(rows)
        except Exception as err:
            # The driver's message can quote the group's rows (other callers' texts): it goes to this log only;
            # every waiting request gets a generic error and answers 503.
            self.failed_commits += 1
            logger.exception("group commit of %d rows failed", len(rows))
            for _, future in group:
                _settle(future, _unavailable("the prediction log could not commit", err))
            return
        finally:
            self._end_commit(len(rows), started)
        self.commits += 1
        self._deaths_in_a_row = 0  # a commit went through: the writer is healthy again
        for _, future in group:
            _settle(future, None)
        if self.on_commit is not None:
            try:
                self.on_commit(CommitStats(len(rows), time.perf_counter() - started))
            except Exception:  # a metrics hook must not end the writer
                logger.exception("on_commit hook failed after a commit of %d rows", len(rows))

    def _begin_commit(self) -> None:
        if self.commit_deadline_s is not None:
            with self._cond:
                self._commit_due = time.monotonic() + self.commit_deadline_s
                if self._watchdog_idle:  # else it wakes at an earlier commit's deadline and looks again
                    self._cond.notify_all()

    def _end_commit(self, rows: int, started: float) -> None:
        if self.commit_deadline_s is None:
            return
        with self._lock:
            self._commit_due = None
            resumed = self._state == "stalled"
            if resumed:
                self._state = "running"
        if resumed:
            logger.warning("prediction log commit of %d rows returned after %.1f s; the writer takes rows again",
                           rows, time.perf_counter() - started)

    def _watch(self) -> None:
        """The watchdog thread: stalls the writer when a commit runs past ``commit_deadline_s``."""
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    due = self._commit_due
                    left = None if due is None else due - time.monotonic()
                    if left is not None and left <= 0 and self._state == "running":
                        break
                    self._watchdog_idle = left is None or left <= 0
                    self._cond.wait(None if self._watchdog_idle else left)
                    self._watchdog_idle = False
                self._commit_due = None  # fire once per commit
                self._state = "stalled"
                self.stalls += 1
                waiting = list(self._in_hand)
                in_hand = len(waiting)
                waiting += self._drain(keep_stop=True)
            logger.error("prediction log commit of %d requests has run past its deadline of %g s (the connect and "
                         "statement timeouts): %d waiting requests failed; new requests are refused until it returns",
                         in_hand, self.commit_deadline_s, len(waiting))
            cause = TimeoutError(f"the commit ran past {self.commit_deadline_s:g} s")
            for _, future in waiting:
                _settle(future, _unavailable("the prediction log did not confirm the commit in time", cause))

    def _drain(self, keep_stop: bool) -> list[Entry]:
        """Take every queued entry (under the lock, so nothing is queued meanwhile); ``keep_stop``: put a stop
        request back (a stalled thread still ends when its commit returns; a dead one needs none)."""
        drained = []
        stop = False
        while True:
            try:
                entry = self.queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                stop = True
            elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Future):
                drained.append(entry)
        if stop and keep_stop:
            self.queue.put(_STOP)
        self._pending_rows = 0
        return drained

    def _died(self, err: BaseException, in_hand: list[Entry]) -> None:
        """Fail every request that waits (in hand or queued), refuse new ones, and schedule a restart or give up."""
        with self._lock:
            waiting = list(in_hand) + self._drain(keep_stop=False)
            self._commit_due = None
            self._deaths_in_a_row += 1
            deaths = self._deaths_in_a_row
            delay = self.restart.backoff_s(deaths)
            if self._stopping:
                self._state = "idle"
            elif deaths > self.restart.max_restarts:
                self._state = "failed"
            else:
                self._state = "restarting"
                self._restart_timer = threading.Timer(delay, self._restart_after_backoff)
                self._restart_timer.daemon = True
                self._restart_timer.start()
            state = self._state
        rows = sum(len(payload) for payload, _ in waiting)
        if state == "restarting":
            logger.error("prediction log writer thread died (%d in a row): %d waiting requests (%d rows) failed; "
                         "restarting it in %g s", deaths, len(waiting), rows, delay, exc_info=err)
        elif state == "failed":
            logger.critical("prediction log writer thread died %d times in a row (WriterRestartPolicy.max_restarts "
                            "%d): %d waiting requests (%d rows) failed; not restarting it, so every request is "
                            "answered 503 until the server is restarted", deaths, self.restart.max_restarts,
                            len(waiting), rows, exc_info=err)
        else:
            logger.error("prediction log writer thread died while stopping: %d waiting requests failed",
                         len(waiting), exc_info=err)
        for _, future in waiting:  # after the log: an operator sees the cause before the callers' 503s
            _settle(future, _unavailable("the prediction log's writer stopped unexpectedly", err))

    def _restart_after_backoff(self) -> None:
        with self._lock:
            if self._stopping or self._state != "restarting":
                return
            self._restart_timer = None
            self.restarts += 1
            self._launch()
        logger.warning("prediction log writer thread restarted (restart %d)", self.restarts)
