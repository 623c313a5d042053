"""Where the embedded default keeps its state, and how a stage's published output is found there.

Each stage writes into a version directory and then publishes it: ``<root>/<stage>/LATEST.json`` names the
directory downstream stages (and the report, the CLI, the benchmarks) read. The pointer is replaced
atomically, so a reader sees the old or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

POINTER_NAME = "LATEST.json"


class StageNotMaterialisedError(RuntimeError):
    """A stage's output was asked for but never published, or its directory is gone."""


def tlp_home() -> Path:
    """Local state (MLflow store, artifacts, Dagster instance): TLP_HOME, or .tlp in the working directory."""
    return Path(os.environ.get("TLP_HOME", ".tlp")).resolve()


def default_tracking_uri(home: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a server), else the SQLite store under ``home``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def publish(root: Path, stage: str, path: Path, run_id: str) -> None:
    pointer = root / stage / POINTER_NAME
    pointer.parent.mkdir(parents=True, exist_ok=True)  # a pass-through stage publishes without a version dir
    temporary = pointer.with_suffix(".tmp")
    temporary.write_text(json.dumps({"path": str(path), "run_id": run_id}))
    temporary.replace(pointer)


def latest_published(root: Path, stage: str) -> Path:
    """The directory last published for ``stage`` under ``root``; StageNotMaterialisedError says what to do."""
    pointer = root / stage / POINTER_NAME
    if not pointer.is_file():
        raise StageNotMaterialisedError(f"no published output of {stage!r} under {root}; materialise {stage} first")
    path = Path(json.loads(pointer.read_text())["path"])
    if not path.exists():
        raise StageNotMaterialisedError(f"{stage!r} points at {path}, which no longer exists; re-materialise it")
    return path
