"""The live deployment: models loaded from the record, and a watcher that swaps them when the record changes.

A changed record (the registry alias moved) is loaded fully, every bundle verified (against the record's
``bundle_sha256`` where it has one), before one reference is swapped; requests in flight keep the models they
started with, so no request fails during the swap.

Failures never stop the serving or the watching. A record that cannot be read or loaded leaves the current
deployment serving; it is logged and reported, and retried with an exponential back-off (a bundle copied after
its record loads on a later try), while a record that changes again is tried at once. A challenger that cannot
be loaded is dropped with an alert: the champion serves every caller (the logged split says so: share 0) and
the challenger is retried with the same back-off; at start-up too, so a broken challenger never keeps the
champion from serving. Only a champion that cannot be loaded at start-up refuses to start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tl_platform.checkpoints.bundle import BundleError
from tl_platform.serving.deployment import DeploymentRecord, DeploymentRecordError, VariantSpec
from tl_platform.serving.model import ModelLoader, ServingModel
from tl_platform.serving.record_source import FileRecordSource, RecordSource

logger = logging.getLogger(__name__)
MAX_RETRY_S = 300.0  # the back-off between tries of one failing record stops growing here


class ModelLoadError(RuntimeError):
    """A variant's model could not be loaded for a reason other than its bundle or record (the runtime refused
    the graph, memory ran out); the message names the role, version and bundle."""


@dataclass(frozen=True)
class LiveDeployment:
    """What serves now. ``record`` is the record as served: with its challenger removed (share 0, no shadow) when
    the challenger could not be loaded, ``challenger_error`` then saying why."""

    record: DeploymentRecord
    champion: ServingModel
    challenger: ServingModel | None
    fingerprint: str  # SHA-256 of the record file's bytes
    challenger_error: str | None = None


@dataclass(frozen=True)
class ReloadOutcome:
    changed: bool
    error: str | None = None


@dataclass(frozen=True)
class _Retry:
    key: str  # the record's fingerprint, or the read error, that failed
    attempts: int
    next_at: float
    error: str


class DeploymentWatcher:
    """Loads the record from ``source`` (a file path, or the registry) and reloads it when its bytes change,
    every ``interval_s`` on a thread.

    ``on_reload(live, error)`` is told of every attempt: ``(live, None)`` loaded fully, ``(live, error)`` loaded
    with the challenger dropped, ``(None, error)`` failed (the previous deployment serves). A failed attempt is
    retried after ``retry_s``, doubling per failure up to ``max_retry_s``; ``retry_s`` defaults to ``interval_s``.
    """

    def __init__(
        self,
        source: RecordSource | Path,
        loader: ModelLoader,
        intra_op_threads: int,
        interval_s: float,
        on_reload: Callable[[LiveDeployment | None, str | None], None] | None = None,
        retry_s: float | None = None,
        max_retry_s: float = MAX_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source: RecordSource = FileRecordSource(source) if isinstance(source, Path) else source
        self.where = self.source.describe()
        self._loader = loader
        self._threads = intra_op_threads
        self._interval = interval_s
        self._on_reload = on_reload
        self._retry_s = retry_s if retry_s is not None else interval_s
        self._max_retry_s = max(max_retry_s, self._retry_s)
        self._clock = clock
        self._current: LiveDeployment | None = None
        self._retry: _Retry | None = None
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LiveDeployment:
        live = self._current
        if live is None:
            raise RuntimeError(f"no deployment loaded from {self.where}")
        return live

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def watching(self) -> bool:
        """The watcher thread runs (False before ``start`` and after ``stop``, or if it ever died)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def problem(self) -> str | None:
        """Why the record on disk is not what serves (a failed reload, a dropped challenger), or None."""
        retry = self._retry
        return retry.error if retry is not None else None

    def load(self) -> LiveDeployment:
        """Load the record now; raise DeploymentRecordError, BundleError or ModelLoadError if its champion cannot
        be served. A challenger that cannot be loaded is dropped (logged, reported, retried later)."""
        with self._lock:
            data = self._read_bytes()
            fingerprint = hashlib.sha256(data).hexdigest()
            live = self._build(data, fingerprint)
            self._current = live
            if live.challenger_error is not None:
                self._schedule(fingerprint, live.challenger_error)
        self._notify(live, live.challenger_error)
        return live

    def check(self) -> ReloadOutcome:
        """Reload if the record's bytes changed, or a failed try is due again; never raises."""
        with self._lock:
            data: bytes | None
            try:
                data = self._read_bytes()
                key = hashlib.sha256(data).hexdigest()
            except DeploymentRecordError as err:
                data, key = None, f"unreadable: {err}"
            current = self._current
            if current is not None and key == current.fingerprint and current.challenger_error is None:
                self._retry = None
                return ReloadOutcome(False)
            retry = self._retry
            if retry is not None and retry.key == key and self._clock() < retry.next_at:
                return ReloadOutcome(False, retry.error)  # the same failure, not due again yet: quiet
            if data is None:
                return self._failed(key.removeprefix("unreadable: "), key)
            try:
                live = self._build(data, key)
            except Exception as err:  # whatever it is, the current deployment keeps serving
                return self._failed(f"{type(err).__name__}: {err}", key)
            if live.challenger_error is not None:
                self._schedule(key, live.challenger_error)
                if current is not None and current.fingerprint == key:  # the same record, its challenger still broken
                    self._notify(None, live.challenger_error)
                    return ReloadOutcome(False, live.challenger_error)
            else:
                self._retry = None
            self._current = live
        logger.info("deployment reloaded: champion %s, challenger %s", live.record.champion.version,
                    live.record.challenger.version if live.record.challenger else None)
        self._notify(live, live.challenger_error)
        return ReloadOutcome(True, live.challenger_error)

    def _schedule(self, key: str, error: str) -> None:
        retry = self._retry
        attempts = retry.attempts + 1 if retry is not None and retry.key == key else 1
        delay = min(self._max_retry_s, self._retry_s * 2 ** (attempts - 1))
        self._retry = _Retry(key, attempts, self._clock() + delay, error)

    def _failed(self, message: str, key: str) -> ReloadOutcome:
        self._schedule(key, message)
        retry = self._retry
        assert retry is not None
        logger.error("deployment reload from %s failed (try %d, next in %.0f s); still serving the previous "
                     "deployment: %s", self.where, retry.attempts, retry.next_at - self._clock(), message)
        self._notify(None, message)
        return ReloadOutcome(False, message)

    def _notify(self, live: LiveDeployment | None, error: str | None) -> None:
        if self._on_reload is None:
            return
        try:
            self._on_reload(live, error)
        except Exception:  # a reporting hook must not stop the reloads it reports on
            logger.exception("the deployment watcher's on_reload hook failed")

    def _read_bytes(self) -> bytes:
        return self.source.read()

    def _build(self, data: bytes, fingerprint: str) -> LiveDeployment:
        try:
            record = DeploymentRecord.from_json(json.loads(data.decode("utf-8")))
        except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
            if isinstance(err, DeploymentRecordError):
                raise DeploymentRecordError(f"{self.where}: {err}") from err
            raise DeploymentRecordError(f"{self.where}: not valid UTF-8 JSON ({err})") from err
        champion = self._model(record.champion, "champion")
        if record.challenger is None:
            return LiveDeployment(record, champion, None, fingerprint)
        try:
            challenger = self._model(record.challenger, "challenger")
        except Exception as err:  # the champion still serves: drop the challenger, alert, retry later
            error = f"{type(err).__name__}: {err}"
            logger.error("ALERT challenger %s dropped: it cannot be loaded from %s; the champion %s serves every "
                         "caller until it can: %s", record.challenger.version, record.challenger.bundle,
                         record.champion.version, error)
            served = dataclasses.replace(record, challenger=None, challenger_share=0.0, shadow=False)
            return LiveDeployment(served, champion, None, fingerprint, error)
        return LiveDeployment(record, champion, challenger, fingerprint)

    def _model(self, spec: VariantSpec, role: str) -> ServingModel:
        current = self._current
        if current is not None:  # a variant that did not change keeps its loaded model
            if spec == current.record.champion:
                return current.champion
            if spec == current.record.challenger and current.challenger is not None:
                return current.challenger
        try:
            return self._loader(self.source.localise(spec), self._threads)
        except BundleError as err:  # name the variant: the record may hold two bundles
            raise BundleError(f"{role}: {err}") from err
        except DeploymentRecordError as err:
            raise DeploymentRecordError(f"{role}: {err}") from err
        except Exception as err:
            raise ModelLoadError(f"{role}: variant {spec.version} from {spec.bundle}: {type(err).__name__}: {err}") from err

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="tlp-deployment-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # check reports its own failures; this is for its bugs: keep watching
                logger.exception("deployment watcher: unexpected error while checking %s; still watching", self.where)
