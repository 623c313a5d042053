"""Serving from the registry: the record from a model tag, versions downloaded, verified, cached, then loaded."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.serving_fixtures import ServingBundles, serving_bundles
from tl_platform.checkpoints.bundle import BundleError, verify_bundle
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import DeploymentRecord, DeploymentRecordError, VariantSpec
from tl_platform.serving.record_source import DIGEST_TAG, RECORD_TAG, RegistryRecordSource
from tl_platform.tracking.mlflow_tracker import MlflowRegistry, MlflowSettings, start_tracked_run

__all__ = ["serving_bundles"]  # the fixture, imported for pytest
MODEL = "tlp-classifier"


class FakeRegistry:
    """A registry in memory: versions are directories copied on download."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.versions: dict[str, tuple[Path, dict[str, str]]] = {}
        self.downloads = 0
        self.unreachable = False

    def model_tag(self, name: str, key: str) -> str | None:
        if self.unreachable:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.tags.get(key)

    def alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def version_tags(self, name: str, version: str) -> dict[str, str] | None:
        found = self.versions.get(version)
        return dict(found[1]) if found is not None else None

    def download_version(self, name: str, version: str, destination: Path) -> Path:
        self.downloads += 1
        target = destination / "bundle"
        shutil.copytree(self.versions[version][0], target)
        return target


def _publish(registry: FakeRegistry, bundle: Path, version: str = "1") -> VariantSpec:
    digest = verify_bundle(bundle).bundle_sha256
    registry.versions[version] = (bundle, {DIGEST_TAG: digest, "bundle_path": "/elsewhere/bundle"})
    spec = VariantSpec(version, Path("/elsewhere/bundle"), "int8", bundle_sha256=digest)
    registry.tags[RECORD_TAG] = json.dumps(DeploymentRecord(champion=spec).to_json())
    registry.aliases["champion"] = version
    return spec


def test_a_version_is_downloaded_once_verified_and_served_from_the_cache(
    serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    registry = FakeRegistry()
    spec = _publish(registry, serving_bundles.exported)
    source = RegistryRecordSource(registry, MODEL, tmp_path / "cache", "test")
    record = DeploymentRecord.from_json(json.loads(source.read()))
    assert record.champion == spec
    local = source.localise(record.champion)
    assert local.bundle.parent == tmp_path / "cache" / MODEL and local.bundle.name.startswith("v1-")
    assert verify_bundle(local.bundle).bundle_sha256 == spec.bundle_sha256
    assert source.localise(record.champion) == local and registry.downloads == 1
    assert sorted(p.name for p in local.bundle.parent.iterdir()) == [local.bundle.name]  # no staging left behind


def test_a_download_that_differs_from_the_digest_is_refused_and_nothing_is_cached(
    serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    altered = tmp_path / "altered"
    shutil.copytree(serving_bundles.exported, altered)
    registry = FakeRegistry()
    spec = _publish(registry, serving_bundles.exported)
    (altered / "projection.json").write_text("{}")  # the store's copy changed after registration
    registry.versions["1"] = (altered, registry.versions["1"][1])
    source = RegistryRecordSource(registry, MODEL, tmp_path / "cache", "test")
    with pytest.raises(BundleError, match=r"projection\.json"):
        source.localise(spec)
    assert list((tmp_path / "cache" / MODEL).iterdir()) == []


def test_record_and_registry_must_carry_the_same_digest(serving_bundles: ServingBundles, tmp_path: Path) -> None:
    registry = FakeRegistry()
    spec = _publish(registry, serving_bundles.exported)
    registry.versions["1"][1][DIGEST_TAG] = "0" * 64
    source = RegistryRecordSource(registry, MODEL, tmp_path / "cache", "test")
    with pytest.raises(BundleError, match="refusing to serve either"):
        source.localise(spec)
    assert registry.downloads == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_record", "no deployment record .*materialise the deployment asset"),
        ("alias_moved", "'champion' alias names version 2, the deployment record version 1"),
        ("unreachable", "cannot read the deployment record .*Connection refused"),
    ],
)
def test_a_record_that_cannot_be_served_is_named(
    serving_bundles: ServingBundles, tmp_path: Path, change: str, message: str
) -> None:
    registry = FakeRegistry()
    _publish(registry, serving_bundles.exported)
    if change == "no_record":
        registry.tags.clear()
    elif change == "alias_moved":
        registry.aliases["champion"] = "2"
    else:
        registry.unreachable = True
    with pytest.raises(DeploymentRecordError, match=message):
        RegistryRecordSource(registry, MODEL, tmp_path / "cache", "test").read()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (VariantSpec("1", Path("/b"), "int8"), "no bundle_sha256"),
        (VariantSpec("1", Path("/b"), "torch", Path("/t"), bundle_sha256="a" * 64), "precision 'torch'"),
        (VariantSpec("9", Path("/b"), "int8", bundle_sha256="a" * 64), "has no version 9"),
    ],
)
def test_variants_the_registry_cannot_serve_are_refused(spec: VariantSpec, message: str, tmp_path: Path) -> None:
    with pytest.raises(DeploymentRecordError, match=message):
        RegistryRecordSource(FakeRegistry(), MODEL, tmp_path / "cache", "test").localise(spec)


def test_two_replicas_sharing_a_cache_both_get_one_verified_copy(serving_bundles: ServingBundles, tmp_path: Path) -> None:
    registry = FakeRegistry()
    spec = _publish(registry, serving_bundles.exported)
    results: list[VariantSpec | BaseException] = []

    def localise() -> None:
        try:
            results.append(RegistryRecordSource(registry, MODEL, tmp_path / "cache", "test").localise(spec))
        except BaseException as err:  # collected and asserted below
            results.append(err)

    threads = [threading.Thread(target=localise) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, VariantSpec) for r in results), results
    assert len({r.bundle for r in results if isinstance(r, VariantSpec)}) == 1
    assert [p.name for p in (tmp_path / "cache" / MODEL).iterdir()] == [results[0].bundle.name]  # type: ignore[union-attr]


def test_a_replica_serves_from_a_real_registry_and_follows_a_moved_alias(
    serving_bundles: ServingBundles, tmp_path: Path
) -> None:
    """MLflow on a SQLite store: two registered versions; the replica shares no path with the producer."""
    settings = MlflowSettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="registry-serving",
                              artifact_location=(tmp_path / "store").as_uri())
    digest = verify_bundle(serving_bundles.exported).bundle_sha256
    versions = []
    for _ in range(2):
        with start_tracked_run(settings, "export", {}) as tracker:
            versions.append(tracker.log_bundle(serving_bundles.exported, "bundle", MODEL, {DIGEST_TAG: digest}).version)
    registry = MlflowRegistry(settings)

    def publish(version: str) -> None:
        registry.set_alias(MODEL, "champion", version)
        spec = VariantSpec(version, Path("/producer/only/bundle"), "int8", bundle_sha256=digest)
        registry.set_model_tag(MODEL, RECORD_TAG, json.dumps(DeploymentRecord(champion=spec).to_json()))

    publish(versions[0])
    config = ServingConfig(registry_model=MODEL, tracking_uri=settings.tracking_uri, model_cache=tmp_path / "cache",
                           log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600)
    with TestClient(create_app(config)) as client:
        first = client.post("/predict", json={"texts": ["Great phone."]})
        assert first.status_code == 200 and first.json()["model_version"] == versions[0], first.text
        registry.set_alias(MODEL, "champion", versions[1])  # the alias moves before the record is rewritten
        client.app.state.runtime.watcher.check()  # type: ignore[attr-defined]
        ready = client.get("/readyz").json()
        assert ready["champion_version"] == versions[0]  # what it had keeps serving, and says why
        assert f"'champion' alias names version {versions[1]}" in ready["deployment_problem"]
        publish(versions[1])
        client.app.state.runtime.watcher.check()  # type: ignore[attr-defined]
        assert client.get("/readyz").json()["deployment_problem"] is None
        second = client.post("/predict", json={"texts": ["Great phone."]})
        assert second.json()["model_version"] == versions[1]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / MODEL).iterdir()) == [
        f"v{versions[0]}", f"v{versions[1]}"
    ]


def test_serving_config_needs_one_source_and_a_tracking_uri_with_the_registry() -> None:
    with pytest.raises(ValueError, match="exactly one of deployment"):
        ServingConfig()
    with pytest.raises(ValueError, match="exactly one of deployment"):
        ServingConfig(deployment=Path("d.json"), registry_model=MODEL, tracking_uri="http://x")
    with pytest.raises(ValueError, match="tracking_uri is required"):
        ServingConfig(registry_model=MODEL)
