"""The code location loads, and its graph (asset keys, dependencies, checks, jobs) matches the pinned snapshot.

A change to the graph shows up here in review. After an intended change, regenerate the snapshot with
``TLP_UPDATE_SNAPSHOTS=1 pytest tests/dagster/test_definitions.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

SNAPSHOT = Path(__file__).parent / "snapshots" / "graph.json"


def graph_snapshot(defs: dg.Definitions) -> dict[str, object]:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "group": node.group_name,
            "checks": sorted(check.name for check in node.check_keys),
            "code_version": node.code_version,
            "pools": sorted(node.pools or []),
        }
    blocking = sorted(
        f"{spec.asset_key.to_user_string()}:{spec.name}"
        for asset in defs.assets or []
        if isinstance(asset, dg.AssetsDefinition)
        for spec in asset.check_specs
        if spec.blocking
    )
    jobs = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
    return {"assets": assets, "blocking_checks": blocking, "jobs": jobs}


def test_graph_matches_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    import definitions

    current = graph_snapshot(definitions.defs)
    if os.environ.get("TLP_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_definitions_validate_for_dagster_dev(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    import definitions

    dg.Definitions.validate_loadable(definitions.defs)
    assert definitions.defs.resolve_job_def("main_job").name == "main_job"


def test_unknown_environment_is_refused() -> None:
    from resources import resources_for_environment

    with pytest.raises(ValueError, match=r"TLP_ENV='staging' is not an environment; use one of \('local', 'production'\)"):
        resources_for_environment("staging")


def test_local_environment_puts_state_under_tlp_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from resources import resources_for_environment

    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    resources = resources_for_environment("local")
    assert resources["mlflow"].tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # type: ignore[attr-defined]
    assert resources["stage_store"].root == str(tmp_path / "artifacts")  # type: ignore[attr-defined]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resources_for_environment("local")["mlflow"].tracking_uri == "http://mlflow.example:5000"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("dagster_config", "library_config", "dagster_only"),
    [
        ("assets.task_model:TaskModelConfig", "tl_platform.training.config:FineTuneConfig", {"min_test_accuracy"}),
        ("assets.domain_adapted:DomainAdaptedConfig", "tl_platform.training.config:DomainAdaptationConfig",
         {"corpus_path", "corpus_text_column", "corpus_text_unit"}),
    ],
)
def test_launchpad_config_mirrors_the_library_defaults(dagster_config: str, library_config: str, dagster_only: set[str]) -> None:
    """The Dagster configs restate the library's fields for the launchpad; they must not drift apart."""
    import dataclasses
    import importlib

    def load(spec: str) -> type:
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]

    launchpad = load(dagster_config)()
    library = load(library_config)()
    mirrored = set(type(launchpad).model_fields) - dagster_only
    assert mirrored == {f.name for f in dataclasses.fields(library)}
    for name in mirrored:
        value = getattr(launchpad, name)
        assert (tuple(value) if isinstance(value, list) else value) == getattr(library, name), name
