"""Where the embedded default keeps its state (TLP_HOME) and which tracking store it uses.

Stage outputs are not found here: each lives under its asset key, partition and run, and is found through
the Dagster materialisation that recorded it (``resources.stage_store``, ``resources.catalogue``).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".tlp"


def tlp_home() -> Path:
    """Local state (MLflow store, artifacts, Dagster instance): TLP_HOME, or .tlp in the working directory."""
    return Path(os.environ.get("TLP_HOME", DEFAULT_HOME)).resolve()


def is_default_home(home: Path) -> bool:
    """Whether ``home`` is what commands use without TLP_HOME (.tlp in the working directory)."""
    return home.resolve() == Path(DEFAULT_HOME).resolve()


def default_tracking_uri(home: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a server), else the SQLite store under ``home``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
