"""Where the serving state lives: the deployment record the server reads and watches."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class DeploymentTarget(dg.ConfigurableResource):
    """The path of the deployment record (JSON); locally under TLP_HOME, in production a shared volume."""

    record_path: str

    def path(self) -> Path:
        return Path(self.record_path)
