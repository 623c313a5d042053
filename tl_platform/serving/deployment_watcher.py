"""The live deployment: models loaded from the record, and a watcher that swaps them when the record changes.

A changed record (the registry alias moved) is loaded fully, every bundle verified (against the record's
``bundle_sha256`` where it has one), before one reference is swapped; requests in flight keep the models they started with, so no request fails during the swap. A record
that cannot be loaded leaves the current deployment serving, and is counted and logged.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tl_platform.checkpoints.bundle import BundleError
from tl_platform.serving.deployment import DeploymentRecord, DeploymentRecordError, VariantSpec
from tl_platform.serving.model import ModelLoader, ServingModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveDeployment:
    record: DeploymentRecord
    champion: ServingModel
    challenger: ServingModel | None
    fingerprint: str  # SHA-256 of the record file's bytes


@dataclass(frozen=True)
class ReloadOutcome:
    changed: bool
    error: str | None = None


class DeploymentWatcher:
    def __init__(
        self,
        path: Path,
        loader: ModelLoader,
        intra_op_threads: int,
        interval_s: float,
        on_reload: Callable[[LiveDeployment | None, str | None], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._threads = intra_op_threads
        self._interval = interval_s
        self._on_reload = on_reload
        self._current: LiveDeployment | None = None
        self._failed_fingerprint: str | None = None
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LiveDeployment:
        live = self._current
        if live is None:
            raise RuntimeError(f"no deployment loaded from {self.path}")
        return live

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def load(self) -> LiveDeployment:
        """Load the record now; raise DeploymentRecordError or BundleError if it cannot be served."""
        with self._lock:
            data = self._read_bytes()
            live = self._build(data)
            self._current = live
        if self._on_reload is not None:
            self._on_reload(live, None)
        return live

    def check(self) -> ReloadOutcome:
        """Reload if the record's bytes changed; keep serving the current deployment if the new one fails."""
        with self._lock:
            try:
                data = self._read_bytes()
            except DeploymentRecordError as err:
                return self._failed(str(err), None)
            fingerprint = hashlib.sha256(data).hexdigest()
            current = self._current
            if current is not None and fingerprint == current.fingerprint:
                return ReloadOutcome(False)
            if fingerprint == self._failed_fingerprint:
                return ReloadOutcome(False, "unchanged since the last failed reload")
            try:
                live = self._build(data)
            except Exception as err:  # any load failure is counted and logged; the current deployment keeps serving
                return self._failed(f"{type(err).__name__}: {err}", fingerprint)
            self._current = live
            self._failed_fingerprint = None
        logger.info("deployment reloaded: champion %s, challenger %s", live.record.champion.version,
                    live.record.challenger.version if live.record.challenger else None)
        if self._on_reload is not None:
            self._on_reload(live, None)
        return ReloadOutcome(True)

    def _failed(self, message: str, fingerprint: str | None) -> ReloadOutcome:
        self._failed_fingerprint = fingerprint
        logger.error("deployment reload from %s failed; still serving the previous deployment: %s", self.path, message)
        if self._on_reload is not None:
            self._on_reload(None, message)
        return ReloadOutcome(False, message)

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError as err:
            raise DeploymentRecordError(f"{self.path}: no deployment record (the deployment asset writes it)") from err

    def _build(self, data: bytes) -> LiveDeployment:
        import json

        try:
            record = DeploymentRecord.from_json(json.loads(data.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DeploymentRecordError(f"{self.path}: not valid UTF-8 JSON ({err})") from err
        except DeploymentRecordError as err:
            raise DeploymentRecordError(f"{self.path}: {err}") from err
        champion = self._model(record.champion, "champion")
        challenger = self._model(record.challenger, "challenger") if record.challenger is not None else None
        return LiveDeployment(record, champion, challenger, hashlib.sha256(data).hexdigest())

    def _model(self, spec: VariantSpec, role: str) -> ServingModel:
        current = self._current
        if current is not None:  # a variant that did not change keeps its loaded model
            if spec == current.record.champion:
                return current.champion
            if spec == current.record.challenger and current.challenger is not None:
                return current.challenger
        try:
            return self._loader(spec, self._threads)
        except BundleError as err:  # name the variant: the record may hold two bundles
            raise BundleError(f"{role}: {err}") from err
        except DeploymentRecordError as err:
            raise DeploymentRecordError(f"{role}: {err}") from err

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
            self.check()

