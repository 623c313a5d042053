"""Where stage outputs (bundles, splits, reports) live, versioned per Dagster run, with a pointer to the latest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg


class StageNotMaterialisedError(RuntimeError):
    """A downstream stage asked for an upstream output that was never published."""


class ArtifactStore(dg.ConfigurableResource):
    """A directory tree ``<root>/<stage>/<run_id>/`` plus ``<root>/<stage>/LATEST.json``.

    Locally the root sits under TLP_HOME; in production it is a volume shared by the user-code containers.
    A stage writes into a fresh version directory and publishes it only when it succeeded, so a failed run
    never replaces what downstream stages read.
    """

    root: str

    def version_dir(self, stage: str, run_id: str) -> Path:
        path = Path(self.root) / stage / run_id
        if path.exists():
            # A re-executed step of the same run: start clean rather than mix two attempts.
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def publish(self, stage: str, path: Path, run_id: str) -> None:
        pointer = Path(self.root) / stage / "LATEST.json"
        pointer.parent.mkdir(parents=True, exist_ok=True)  # a pass-through stage publishes without a version dir
        temporary = pointer.with_suffix(".tmp")
        temporary.write_text(json.dumps({"path": str(path), "run_id": run_id}))
        temporary.replace(pointer)  # atomic: readers see the old or the new pointer, never half of one

    def latest(self, stage: str) -> Path:
        pointer = Path(self.root) / stage / "LATEST.json"
        if not pointer.is_file():
            raise StageNotMaterialisedError(
                f"no published output of {stage!r} under {self.root}; materialise {stage} first"
            )
        path = Path(json.loads(pointer.read_text())["path"])
        if not path.exists():
            raise StageNotMaterialisedError(f"{stage!r} points at {path}, which no longer exists; re-materialise it")
        return path
