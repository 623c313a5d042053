"""How `tlp` drives Dagster: the local instance and its settings, run config files, and the executables.

Orchestration commands shell out to the ``dagster`` and ``mlflow`` executables, so the library never imports
Dagster; this module prepares what those processes need.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tl_platform.local_state import tlp_home

RunConfig = dict[str, dict[str, dict[str, dict[str, object]]]]  # {"ops": {op: {"config": {field: value}}}}

# Dagster's defaults (SQLite under DAGSTER_HOME) plus pool limits: the training stages share one machine's
# cores, so two runs (a retrain beside a backfill, say) train one at a time; registry moves are serialised too.
LOCAL_INSTANCE_YAML = """\
concurrency:
  pools:
    default_limit: 1
"""


# The code location's name everywhere: workspace.yaml, deploy/workspace.yaml, pyproject's [tool.dagster], and the
# workspace `tlp ui` writes. Sensor ticks are stored under it, so the story's ticks show wherever it matches.
CODE_LOCATION_NAME = "tl_platform"


def local_workspace(env: dict[str, str], working_directory: Path) -> Path:
    """The workspace file `tlp ui` serves: the ``definitions`` module as the code location CODE_LOCATION_NAME
    (``dagster dev -m definitions`` would name it after the module), written beside the instance."""
    path = Path(env["DAGSTER_HOME"]) / "workspace.yaml"
    workspace = {"load_from": [{"python_module": {
        "module_name": "definitions", "location_name": CODE_LOCATION_NAME, "working_directory": str(working_directory),
    }}]}
    path.write_text(json.dumps(workspace, indent=2) + "\n")  # JSON is YAML
    return path


def dagster_environment() -> dict[str, str]:
    home = tlp_home()
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_file = dagster_home / "dagster.yaml"
    if not instance_file.is_file() or not instance_file.read_text().strip():  # never overwrite a user's settings
        instance_file.write_text(LOCAL_INSTANCE_YAML)
    env = dict(os.environ)
    env.update(
        {
            "TLP_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def ensure_instance_storage(env: dict[str, str]) -> None:
    """Create the local Dagster instance's storage once, before a run starts.

    Two `tlp run`s started together on a fresh TLP_HOME would each create it, and Dagster's SQLite migrations
    then collide ("more than one head"); a file lock lets the first create it and the second find it.
    """
    import fcntl

    home = Path(env["DAGSTER_HOME"])
    with open(home / ".storage.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "history" / "runs.db").exists():
            subprocess.run([executable("dagster"), "instance", "migrate"], env=env, check=True, capture_output=True)


def config_file(env: dict[str, str], kind: str, config: RunConfig) -> Path:
    """This invocation's own run config file: two commands at once never read each other's."""
    import tempfile

    directory = Path(env["TLP_HOME"]) / "run_configs"
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".json", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
    return Path(name)


def executable(name: str) -> str:
    # Prefer the one beside this interpreter (the project's virtual environment), then PATH.
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"tlp: {name!r} is not installed in this environment (pip install -e .)")
    return found



def load_config_file(path: Path) -> RunConfig:
    if not path.is_file():
        raise SystemExit(f"tlp: config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("ops", {}), dict):
        raise SystemExit(f"tlp: {path} must hold a mapping with an 'ops' mapping (Dagster run config)")
    return loaded
