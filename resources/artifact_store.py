"""Where stage outputs (bundles, splits, reports) live, versioned per Dagster run, with a pointer to the latest."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from tl_platform.local_state import latest_published, publish


class ArtifactStore(dg.ConfigurableResource):
    """A directory tree ``<root>/<stage>/<run_id>/`` plus the published pointer of each stage (``local_state``).

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
        publish(Path(self.root), stage, path, run_id)

    def latest(self, stage: str) -> Path:
        return latest_published(Path(self.root), stage)
