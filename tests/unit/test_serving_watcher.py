"""The deployment watcher under failure: every error reported, failed reloads retried with back-off, a broken
challenger dropped (with an alert) while the champion serves. Fake models and a fake clock: no bundles, no waits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from tl_platform.serving.deployment import DeploymentRecord, DeploymentRecordError, VariantSpec, write_deployment_record
from tl_platform.serving.deployment_watcher import DeploymentWatcher, LiveDeployment
from tl_platform.serving.model import ServingModel


class FakeModel:
    def __init__(self, spec: VariantSpec) -> None:
        self.version, self.precision = spec.version, spec.precision


class Loader:
    """Loads FakeModels; the versions in ``broken`` raise ``error`` (a bundle copied later: remove them)."""

    def __init__(self, error: Exception | None = None, *broken: str) -> None:
        self.broken = set(broken)
        self.error = error or RuntimeError("ONNX graph is corrupt")
        self.calls: list[str] = []

    def __call__(self, spec: VariantSpec, threads: int) -> ServingModel:
        self.calls.append(spec.version)
        if spec.version in self.broken:
            raise self.error
        return cast(ServingModel, FakeModel(spec))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(path: Path, champion: str = "1", challenger: str | None = None, share: float = 0.0) -> Path:
    spec = VariantSpec(champion, Path("/bundles") / champion)
    other = VariantSpec(challenger, Path("/bundles") / challenger) if challenger else None
    return write_deployment_record(path, DeploymentRecord(spec, other, share))


Reports = list[tuple[str | None, str | None]]


def watcher(path: Path, loader: Loader, clock: Clock, reports: Reports, retry_s: float = 1.0) -> DeploymentWatcher:
    def on_reload(live: LiveDeployment | None, error: str | None) -> None:
        reports.append((live.champion.version if live else None, error))

    return DeploymentWatcher(path, loader, 1, 3600, on_reload, retry_s=retry_s, max_retry_s=8.0, clock=clock)


def test_a_failed_reload_of_the_same_record_is_retried_with_back_off(tmp_path: Path) -> None:
    path = record(tmp_path / "d.json")
    loader, clock, reports = Loader(None, "2"), Clock(), cast(Reports, [])
    w = watcher(path, loader, clock, reports)
    w.load()
    record(path, champion="2")  # its bundle is not there yet
    tries = []
    for _ in range(60):  # one minute of checks, a second apart
        before = len(loader.calls)
        w.check()
        if len(loader.calls) > before:
            tries.append(clock.now - 1000)
        clock.now += 1
    assert tries == [0, 1, 3, 7, 15, 23, 31, 39, 47, 55]  # doubling from 1 s, capped at 8 s
    assert w.current.champion.version == "1" and "ONNX graph is corrupt" in (w.problem or "")
    assert [r for r in reports if r[0] is None] == [(None, w.problem)] * 10  # each try reported, quiet between
    loader.broken.clear()  # the bundle arrived: the next due try loads it
    clock.now += 8
    assert w.check().changed and w.current.champion.version == "2" and w.problem is None
    assert reports[-1] == ("2", None)


def test_a_changed_record_is_tried_at_once_despite_the_back_off(tmp_path: Path) -> None:
    path = record(tmp_path / "d.json")
    loader, clock, reports = Loader(None, "2"), Clock(), cast(Reports, [])
    w = watcher(path, loader, clock, reports, retry_s=60)
    w.load()
    record(path, champion="2")
    assert w.check().error == "ModelLoadError: champion: variant 2 from /bundles/2: RuntimeError: ONNX graph is corrupt"
    assert w.check().error and loader.calls.count("2") == 1  # not due: quiet
    record(path, champion="3")
    assert w.check().changed and w.current.champion.version == "3"


@pytest.mark.parametrize("make_unreadable", [
    lambda p: (p.unlink(), p.mkdir()),  # IsADirectoryError: an OSError other than a missing file
    lambda p: p.unlink(),
    lambda p: p.write_bytes(b"[" * 100_000),  # nested past the JSON parser's depth limit
    lambda p: p.write_bytes(b"\xff\xfe not utf-8"),
], ids=["directory", "missing", "deep-json", "not-utf8"])
def test_every_read_error_is_reported_and_the_deployment_keeps_serving(
    tmp_path: Path, make_unreadable: Callable[[Path], Any]
) -> None:
    path = record(tmp_path / "d.json")
    loader, clock, reports = Loader(), Clock(), cast(Reports, [])
    w = watcher(path, loader, clock, reports)
    w.load()
    make_unreadable(path)
    outcome = w.check()
    assert not outcome.changed and str(path) in (outcome.error or "")
    assert reports[-1][0] is None and reports[-1][1] == outcome.error
    assert w.current.champion.version == "1"


def test_the_watcher_thread_survives_errors_of_its_own_hook_and_of_the_filesystem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = record(tmp_path / "d.json")

    def exploding_hook(live: LiveDeployment | None, error: str | None) -> None:
        raise ValueError("metrics backend exploded")

    w = DeploymentWatcher(path, Loader(), 1, 0.05, exploding_hook, retry_s=0.05)
    w.load()
    w.start()
    try:
        path.unlink()
        path.mkdir()  # read errors every check
        time.sleep(0.3)
        assert w.watching
        path.rmdir()
        record(path, champion="5")
        deadline = time.monotonic() + 5
        while w.current.champion.version != "5" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.current.champion.version == "5" and w.watching
    finally:
        w.stop()
    assert "on_reload hook failed" in caplog.text and "metrics backend exploded" in caplog.text


def test_a_broken_challenger_at_start_is_dropped_with_an_alert_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = record(tmp_path / "d.json", challenger="2", share=0.5)
    loader, clock, reports = Loader(None, "2"), Clock(), cast(Reports, [])
    w = watcher(path, loader, clock, reports)
    with caplog.at_level(logging.ERROR):
        live = w.load()  # no exception: the champion can serve
    assert live.champion.version == "1" and live.challenger is None
    # served as champion-only, and logged so: every unit is the champion's, the split is 0
    assert (live.record.challenger, live.record.challenger_share, live.record.shadow) == (None, 0.0, False)
    assert "ModelLoadError: challenger: variant 2" in (live.challenger_error or "")
    assert "ALERT challenger 2 dropped" in caplog.text
    assert reports == [("1", live.challenger_error)]
    assert not w.check().changed and loader.calls.count("2") == 1  # not due yet
    clock.now += 1
    assert not w.check().changed and loader.calls.count("2") == 2  # due: tried, still broken, champion kept
    assert w.current is live and loader.calls.count("1") == 1  # the champion is never reloaded for it
    loader.broken.clear()
    clock.now += 2
    outcome = w.check()
    assert outcome.changed and outcome.error is None
    assert w.current.challenger is not None and w.current.record.challenger_share == 0.5 and w.problem is None


def test_a_broken_champion_still_refuses_to_start(tmp_path: Path) -> None:
    path = record(tmp_path / "d.json", challenger="2", share=0.5)
    from tl_platform.checkpoints.bundle import BundleError

    with pytest.raises(BundleError, match="champion: no manifest"):
        watcher(path, Loader(BundleError("no manifest"), "1"), Clock(), []).load()
    with pytest.raises(DeploymentRecordError, match="no deployment record"):
        watcher(tmp_path / "none.json", Loader(), Clock(), []).load()
