"""The artifact store: versioned directories and an atomically replaced LATEST pointer."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources import ArtifactStore, StageNotMaterialisedError


def test_publish_then_latest(tmp_path: Path) -> None:
    store = ArtifactStore(root=str(tmp_path))
    first = store.version_dir("task_model", "run-1")
    store.publish("task_model", first, "run-1")
    second = store.version_dir("task_model", "run-2")
    assert store.latest("task_model") == first  # an unpublished version is invisible downstream
    store.publish("task_model", second, "run-2")
    assert store.latest("task_model") == second


def test_a_retried_step_starts_from_an_empty_directory(tmp_path: Path) -> None:
    store = ArtifactStore(root=str(tmp_path))
    (store.version_dir("s", "r") / "half-written").write_text("x")
    assert list(store.version_dir("s", "r").iterdir()) == []


def test_unpublished_and_vanished_stages_are_named(tmp_path: Path) -> None:
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(StageNotMaterialisedError, match="no published output of 'foundation_model'"):
        store.latest("foundation_model")
    gone = store.version_dir("foundation_model", "r")
    store.publish("foundation_model", gone, "r")
    gone.rmdir()
    with pytest.raises(StageNotMaterialisedError, match="no longer exists; re-materialise it"):
        store.latest("foundation_model")
