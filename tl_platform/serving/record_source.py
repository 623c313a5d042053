"""Where a replica reads its deployment record and finds the bundles the record names.

Two sources. ``FileRecordSource``: the record is a file and its bundles are directories on this machine (one
host, `tlp run`, the tests). ``RegistryRecordSource``: the record is a tag of the registered serving model and
the bundles are its versions' artifacts on the tracking server, so replicas on other machines share nothing
but the registry and the prediction log. A replica reading the registry resolves the ``champion`` alias and
serves a record only when the alias names the record's champion; it downloads each version into a local
cache and verifies it against the digest that both the record and the registry carry, before it loads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from tl_platform.checkpoints.bundle import BundleError, verify_bundle
from tl_platform.serving.deployment import DeploymentRecord, DeploymentRecordError, VariantSpec

logger = logging.getLogger(__name__)
RECORD_TAG = "tlp.deployment_record"  # the registered model's tag holding the deployment record (JSON)
DIGEST_TAG = "bundle_sha256"  # each version's tag: the SHA-256 of its exported bundle's manifest


class RecordSource(Protocol):
    """What the deployment watcher reads."""

    def describe(self) -> str:
        """Where the record is, for messages."""
        ...

    def read(self) -> bytes:
        """The record's bytes; raise DeploymentRecordError naming what is wrong when there is none to serve."""
        ...

    def localise(self, spec: VariantSpec) -> VariantSpec:
        """The variant with ``bundle`` naming a verified directory on this machine."""
        ...


class FileRecordSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError as err:
            raise DeploymentRecordError(f"{self.path}: no deployment record (the deployment asset writes it)") from err
        except OSError as err:  # a directory, no permission, an I/O error: reported like a missing file
            raise DeploymentRecordError(f"{self.path}: cannot read the deployment record ({err})") from err

    def localise(self, spec: VariantSpec) -> VariantSpec:
        return spec


class RegistryReader(Protocol):
    """The registry calls a replica makes (``tl_platform.tracking.mlflow_tracker.MlflowRegistry``)."""

    def model_tag(self, name: str, key: str) -> str | None: ...

    def alias_version(self, name: str, alias: str) -> str | None: ...

    def version_tags(self, name: str, version: str) -> dict[str, str] | None: ...

    def download_version(self, name: str, version: str, destination: Path) -> Path: ...


_CACHE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class RegistryRecordSource:
    """The record from the registered model ``model_name``'s tag, bundles from its versions' artifacts.

    ``cache_dir`` keeps each downloaded version under ``<model>/v<version>-<digest prefix>``; a version already
    there is verified again and reused. Downloads land in a temporary directory beside it and are renamed into
    place only once verified, so two replicas sharing a cache never load a half-written bundle.
    """

    def __init__(self, registry: RegistryReader, model_name: str, cache_dir: Path, where: str) -> None:
        self._registry = registry
        self.model_name = model_name
        self.cache_dir = Path(cache_dir)
        self._where = where

    def describe(self) -> str:
        return f"registered model {self.model_name!r} at {self._where}"

    def read(self) -> bytes:
        try:
            text = self._registry.model_tag(self.model_name, RECORD_TAG)
            champion_alias = self._registry.alias_version(self.model_name, "champion")
        except Exception as err:  # unreachable, refused, timed out: the replica keeps what it serves
            raise DeploymentRecordError(
                f"{self.describe()}: cannot read the deployment record ({type(err).__name__}: {err})"
            ) from err
        if text is None:
            raise DeploymentRecordError(
                f"{self.describe()}: no deployment record (tag {RECORD_TAG!r}); materialise the deployment asset"
            )
        data = text.encode("utf-8")
        try:
            record = DeploymentRecord.from_json(json.loads(text))
        except (ValueError, RecursionError):
            return data  # the watcher reports what is wrong with it
        if champion_alias != record.champion.version:
            raise DeploymentRecordError(
                f"{self.describe()}: the 'champion' alias names version {champion_alias}, the deployment record "
                f"version {record.champion.version}; serving neither until they agree (an alias moved without the "
                "deployment asset writing the record: materialise it)"
            )
        return data

    def localise(self, spec: VariantSpec) -> VariantSpec:
        digest = spec.bundle_sha256
        if digest is None:
            raise DeploymentRecordError(
                f"version {spec.version}: the record has no bundle_sha256; a replica serving from the registry "
                "verifies every download against it"
            )
        if spec.precision == "torch":
            raise DeploymentRecordError(
                f"version {spec.version}: precision 'torch' runs a task bundle the registry does not serve; "
                "use int8 or fp32"
            )
        tags = self._registry.version_tags(self.model_name, spec.version)
        if tags is None:
            raise DeploymentRecordError(f"{self.describe()}: has no version {spec.version}")
        registered = tags.get(DIGEST_TAG)
        if registered != digest:
            raise BundleError(
                f"{self.model_name} v{spec.version}: the deployment record says bundle SHA-256 {digest}, the "
                f"registry's tag {DIGEST_TAG!r} says {registered}; refusing to serve either"
            )
        target = self.cache_dir / _CACHE_NAME.sub("_", self.model_name) / f"v{spec.version}-{digest[:16]}"
        if not target.is_dir():
            self._download(spec.version, digest, target)
        manifest = verify_bundle(target, expected_stage="exported")
        if manifest.bundle_sha256 != digest:
            raise BundleError(f"{target}: manifest SHA-256 {manifest.bundle_sha256}, the record says {digest}")
        return dataclasses.replace(spec, bundle=target)

    def _download(self, version: str, digest: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            logger.info("downloading %s v%s from %s into %s", self.model_name, version, self._where, target)
            downloaded = self._registry.download_version(self.model_name, version, staging)
            manifest = verify_bundle(downloaded, expected_stage="exported")
            if manifest.bundle_sha256 != digest:
                raise BundleError(
                    f"{self.model_name} v{version}: the downloaded bundle's manifest SHA-256 is "
                    f"{manifest.bundle_sha256}, the record and the registry say {digest}"
                )
            try:
                os.rename(downloaded, target)
            except OSError:
                if not target.is_dir():  # not another replica's finished copy: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def registry_source(model_name: str, tracking_uri: str, cache_dir: Path) -> RegistryRecordSource:
    """A source reading the MLflow registry at ``tracking_uri`` (MLflow is imported only here)."""
    from tl_platform.tracking.mlflow_tracker import MlflowRegistry, MlflowSettings

    registry = MlflowRegistry(MlflowSettings(tracking_uri=tracking_uri, experiment_name="serving"))
    return RegistryRecordSource(registry, model_name, cache_dir, tracking_uri)
