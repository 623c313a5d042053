"""The `tlp` command line: run config from flags, data and bundle checks with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tl_platform.cli import build_parser, main, run_config_from_args


def test_flags_become_run_config_over_a_file(tmp_path: Path) -> None:
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"ops": {"task_model": {"config": {"epochs": 2, "batch_size": 8}}}}))
    args = build_parser().parse_args(
        ["run", "--domain", "yelp", "--method", "full", "--epochs", "5", "--skip-domain-adaptation", "--config", str(config_file)]
    )
    ops = run_config_from_args(args)["ops"]
    assert ops == {
        "task_model": {"config": {"epochs": 5, "batch_size": 8, "method": "full"}},
        "labelled_data": {"config": {"domain": "yelp"}},
        "domain_adapted_model": {"config": {"enabled": False}},
    }


def test_bad_choices_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--method", "adapter"])
    err = capsys.readouterr().err
    assert "argument --method: invalid choice: 'adapter'" in err and "lora" in err and "full" in err


def test_config_file_must_be_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    args = build_parser().parse_args(["run", "--config", str(bad)])
    with pytest.raises(SystemExit, match="must hold a mapping with an 'ops' mapping"):
        run_config_from_args(args)


def test_data_check_reports_counts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood,1\ngood,1\nbad,0\n")
    assert main(["data", "check", str(path), "--labels", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "3 rows read, 2 kept" in out and "exact duplicates dropped: 1" in out


def test_data_check_names_the_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood,1\nmeh,2\n")
    assert main(["data", "check", str(path), "--labels", "0,1"]) == 1
    assert "line 3: label '2' is not in the schema's label set ['0', '1']" in capsys.readouterr().err


def test_bundle_verify_refuses_a_non_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bundle", "verify", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_each_invocation_gets_its_own_run_config_file(tmp_path: Path) -> None:
    """Two `tlp run`s at once must not read each other's config (a shared file would be overwritten)."""
    from tl_platform.orchestration import config_file

    env = {"TLP_HOME": str(tmp_path)}
    first = config_file(env, "run", {"ops": {"labelled_data": {"config": {"domain": "yelp"}}}})
    second = config_file(env, "run", {"ops": {"labelled_data": {"config": {"domain": "imdb"}}}})
    assert first != second and first.parent == second.parent == tmp_path / "run_configs"
    assert json.loads(first.read_text())["ops"]["labelled_data"]["config"]["domain"] == "yelp"
    assert json.loads(second.read_text())["ops"]["labelled_data"]["config"]["domain"] == "imdb"


def test_the_instance_storage_is_created_once_before_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tl_platform import orchestration

    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    env = orchestration.dagster_environment()
    orchestration.ensure_instance_storage(env)
    runs_db = Path(env["DAGSTER_HOME"]) / "history" / "runs.db"
    assert runs_db.is_file()
    assert "default_limit: 1" in (Path(env["DAGSTER_HOME"]) / "dagster.yaml").read_text()
    calls: list[object] = []
    monkeypatch.setattr(orchestration.subprocess, "run", lambda *a, **k: calls.append(a))
    orchestration.ensure_instance_storage(env)
    assert calls == []  # already there: nothing is run again
