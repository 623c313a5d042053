"""Shared fixtures of the serving tests: one tiny task bundle and its exported bundle per test session.

Import the fixtures into a test module (``from tests.serving_fixtures import serving_bundles``); the bundles
are built once per session even when several modules import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny_bundles import build_tiny_exported_bundle, build_tiny_task_bundle
from tl_platform.serving.deployment import DeploymentRecord, VariantSpec, write_deployment_record

_BUILT: dict[str, ServingBundles] = {}


@dataclass(frozen=True)
class ServingBundles:
    task: Path
    exported: Path


@pytest.fixture(scope="session")
def serving_bundles(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ServingBundles:
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        root = tmp_path_factory.mktemp("serving_bundles")
        task = build_tiny_task_bundle(tiny_bert_dir, root / "task", epochs=1)
        exported = build_tiny_exported_bundle(task, root / "exported")
        _BUILT[key] = ServingBundles(task, exported)
    return _BUILT[key]


def write_record(path: Path, bundle: Path, version: str = "1", challenger_version: str | None = None,
                 share: float = 0.0, shadow: bool = False, precision: str = "int8") -> Path:
    champion = VariantSpec(version, bundle, precision)  # type: ignore[arg-type]
    challenger = VariantSpec(challenger_version, bundle, precision) if challenger_version else None  # type: ignore[arg-type]
    return write_deployment_record(path, DeploymentRecord(champion, challenger, share, shadow))
