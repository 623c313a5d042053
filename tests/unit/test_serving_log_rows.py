"""What the server writes to the prediction log beyond the prediction: the text (or not, with capture off),
the experiment, routing salt and split in force, text retention; and the bundle digests of the deployment
record, verified at start and on reload."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.checkpoints import capture_provenance, seal_bundle
from tl_platform.checkpoints.bundle import BundleError, verify_bundle
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.model import load_variant
from tl_platform.serving.prediction_log import SERVED, SHADOW, PredictionLog, PredictionRow
from tl_platform.serving.routing import assign_variant
from tl_platform.serving.text_retention import TextRetention

__all__ = ["serving_bundles"]  # the fixture, imported for pytest


def _config(tmp_path: Path, deployment: Path, **settings: object) -> ServingConfig:
    return ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600,
                         **settings)  # type: ignore[arg-type]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_rows_carry_the_records_experiment_salt_and_split(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported, challenger_version="2", share=0.5,
                              experiment_id="exp-1", routing_salt="exp-1-salt")
    units = [f"user-{i}" for i in range(16)]
    # the test tells the salts apart only if some unit lands elsewhere under the server's default salt
    assert any(assign_variant("exp-1-salt", u, 0.5) != assign_variant("tlp-ab", u, 0.5) for u in units)
    with TestClient(create_app(_config(tmp_path, deployment))) as client:
        bodies = {u: client.post("/predict", json={"text": f"hello {u}", "unit_id": u}).json() for u in units}
        rows = {r["unit_id"]: r for r in client.app.state.runtime.log.rows(SERVED)}  # type: ignore[attr-defined]
    for unit, body in bodies.items():
        assert body["variant"] == assign_variant("exp-1-salt", unit, 0.5)
        row = rows[unit]
        assert (row["variant"], row["routing_salt"], row["experiment_id"], row["challenger_share"]) == (
            body["variant"], "exp-1-salt", "exp-1", 0.5)
        assert row["text"] == f"hello {unit}"


@pytest.mark.parametrize("capture", [True, False])
def test_shadow_rows_carry_the_split_and_capture_off_logs_features_without_text(
    tmp_path: Path, serving_bundles: ServingBundles, capture: bool
) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported, challenger_version="2", shadow=True,
                              experiment_id="shadow-exp")
    texts = ["loud and clear", "a" * 30]
    with TestClient(create_app(_config(tmp_path, deployment, capture_text=capture, max_text_chars=20,
                                       on_overlong="truncate"))) as client:
        rid = client.post("/predict", json={"texts": texts, "unit_id": "u1"}).json()["request_id"]
        log = client.app.state.runtime.log  # type: ignore[attr-defined]
        _wait_for(lambda: len(log.rows(SHADOW)) == 2)
        rows = log.rows()
    assert {(r["request_id"], r["role"]) for r in rows} == {(rid, SERVED), (rid, SHADOW)}
    expected_texts = ["loud and clear", "a" * 20] if capture else [None, None]  # as scored: truncated to 20
    for role in (SERVED, SHADOW):
        mine = sorted((r for r in rows if r["role"] == role), key=lambda r: r["item_index"])
        assert [r["text"] for r in mine] == expected_texts
        assert [(r["experiment_id"], r["routing_salt"], r["challenger_share"]) for r in mine] == [("shadow-exp", "tlp-ab", 0.0)] * 2
        assert [r["text_chars"] for r in mine] == [14, 20] and [r["truncated"] for r in mine] == [False, True]
        assert all(r["projection_3"] is not None and r["confidence"] is not None for r in mine)  # features kept


def _row(request_id: str, age: timedelta, text: str | None = "private words") -> PredictionRow:
    return PredictionRow(
        request_id=request_id, item_index=0, role=SERVED, ts=datetime.now(UTC) - age, unit_id=None, variant="champion",
        model_version="1", label="1", confidence=0.9, probabilities={"0": 0.1, "1": 0.9}, latency_ms=1.0,
        text_chars=13, token_count=4, unknown_share=0.0, truncated=False, projection=(0.1, 0.2), text=text,
        experiment_id=None, routing_salt="tlp-ab", challenger_share=0.0,
    )


def test_the_server_purges_expired_texts_as_it_starts(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    config = _config(tmp_path, write_record(tmp_path / "d.json", serving_bundles.exported), text_retention_days=30)
    seed = PredictionLog(config.log_url)
    seed.start()
    seed.submit([_row("1" * 32, timedelta(days=31)), _row("2" * 32, timedelta(days=29))]).result(timeout=10)
    seed.close()
    with TestClient(create_app(config)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        _wait_for(lambda: runtime.retention.runs >= 1)
        texts = {r["request_id"]: r["text"] for r in runtime.log.rows()}
        metrics = client.get("/metrics").text
    assert texts == {"1" * 32: None, "2" * 32: "private words"}
    assert "tlp_log_texts_purged_total 1.0" in metrics and 'tlp_log_text_purges_total{outcome="ok"} 1.0' in metrics


@dataclass
class FlakyLog:
    """A log whose first purge fails (the database away) and whose later purges each remove 3 texts."""

    calls: int = 0
    cutoffs: list[datetime] | None = None

    def purge_texts(self, older_than: datetime) -> int:
        self.calls += 1
        self.cutoffs = [*(self.cutoffs or []), older_than]
        if self.calls == 1:
            raise OSError("database unreachable")
        return 3


def test_retention_repeats_every_interval_and_survives_a_failed_purge(caplog: pytest.LogCaptureFixture) -> None:
    log = FlakyLog()
    outcomes: list[int | None] = []
    now = datetime(2025, 6, 30, tzinfo=UTC)
    retention = TextRetention(log, 7, 0.05, outcomes.append, now=lambda: now)  # type: ignore[arg-type]
    retention.start()
    _wait_for(lambda: len(outcomes) >= 3)
    retention.stop()
    assert outcomes[:3] == [None, 3, 3] and retention.purged == 3 * (len(outcomes) - 1)
    assert log.cutoffs is not None and set(log.cutoffs) == {datetime(2025, 6, 23, tzinfo=UTC)}
    assert "purging logged texts failed" in caplog.text and "database unreachable" in caplog.text
    calls = log.calls
    time.sleep(0.15)
    assert log.calls == calls  # stopped
    with pytest.raises(ValueError, match="retention_days must be at least 1, got 0"):
        TextRetention(log, 0, 1.0)  # type: ignore[arg-type]


def test_a_record_whose_digest_differs_is_refused_at_start(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    found = verify_bundle(serving_bundles.exported).bundle_sha256
    wrong = "f" * 64
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported, digest=wrong)
    with pytest.raises(BundleError) as refused:
        create_app(_config(tmp_path, deployment))
    assert str(refused.value) == (
        f"champion: variant 1: {serving_bundles.exported} has manifest SHA-256 {found}, but the deployment record "
        f"expects bundle_sha256 {wrong}; the bundle changed since it was deployed, or the record names the wrong bundle"
    )
    write_record(deployment, serving_bundles.exported, digest=found)
    with TestClient(create_app(_config(tmp_path, deployment))) as client:
        assert client.post("/predict", json={"text": "fine"}).json()["model_version"] == "1"


def test_a_reload_to_a_mismatched_digest_keeps_serving_the_current_deployment(
    tmp_path: Path, serving_bundles: ServingBundles
) -> None:
    found = verify_bundle(serving_bundles.exported).bundle_sha256
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported, digest=found)
    with TestClient(create_app(_config(tmp_path, deployment))) as client:
        watcher = client.app.state.runtime.watcher  # type: ignore[attr-defined]
        write_record(deployment, serving_bundles.exported, version="2", digest="0" * 64)
        outcome = watcher.check()
        assert not outcome.changed
        assert outcome.error == (
            f"BundleError: champion: variant 2: {serving_bundles.exported} has manifest SHA-256 {found}, but the "
            f"deployment record expects bundle_sha256 {'0' * 64}; the bundle changed since it was deployed, or the "
            "record names the wrong bundle"
        )
        assert client.post("/predict", json={"text": "still"}).json()["model_version"] == "1"
        assert 'tlp_deployment_reloads_total{outcome="failed"} 1.0' in client.get("/metrics").text
        write_record(deployment, serving_bundles.exported, version="2", digest=found)
        assert watcher.check().changed
        assert client.post("/predict", json={"text": "now"}).json()["model_version"] == "2"


def test_a_bundle_whose_projection_exceeds_the_log_columns_is_refused(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    copy = tmp_path / "wide"
    shutil.copytree(serving_bundles.exported, copy)
    (copy / "manifest.json").unlink()
    projection = json.loads((copy / "projection.json").read_text())
    width = len(projection["mean"])
    projection["components"] = [[0.0] * width for _ in range(9)]  # exported before the [1, 8] bound
    projection["explained_variance_ratio"] = [0.1] * 9
    (copy / "projection.json").write_text(json.dumps(projection))
    seal_bundle(copy, capture_provenance("exported", {}, {}, {}, None))
    with pytest.raises(BundleError, match=r"projection has 9 components; the prediction log holds at most 8 \(re-export with "
                                          r"ExportConfig.projection_components <= 8\)"):
        load_variant(VariantSpec("1", copy, "int8"))


def test_retention_thread_is_not_the_event_loop(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    config = _config(tmp_path, write_record(tmp_path / "d.json", serving_bundles.exported))
    with TestClient(create_app(config)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        _wait_for(lambda: runtime.retention.runs >= 1)
        names = {t.name for t in threading.enumerate()}
    assert "tlp-text-retention" in names
    assert "tlp-text-retention" not in {t.name for t in threading.enumerate()}  # stopped with the app
