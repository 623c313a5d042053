"""`tlp serve` and `python -m tl_platform.serving`: flags become a validated ServingConfig; bad ones, a missing
record and a stale log schema (with --no-migrate) are refused with exit status 2 and a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving_fixtures import ServingBundles, make_old_log, serving_bundles, write_record
from tl_platform.cli import build_parser, main
from tl_platform.serving.server import config_from_args

__all__ = ["serving_bundles"]  # the fixture, imported for pytest


def test_serve_flags_become_a_serving_config() -> None:
    args = build_parser().parse_args(
        ["serve", "--deployment", "d.json", "--log-url", "sqlite:///x.db", "--threads", "2", "--batch-workers", "3",
         "--max-batch-size", "32", "--max-wait-ms", "7.5", "--on-overlong", "truncate", "--no-length-buckets"]
    )
    config = config_from_args(args)
    assert (config.deployment, config.log_url, config.intra_op_threads, config.batch_workers) == (Path("d.json"), "sqlite:///x.db", 2, 3)
    assert (config.max_batch_size, config.max_wait_ms, config.on_overlong, config.bucket_edges) == (32, 7.5, "truncate", ())
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_serve_refuses_bad_settings_and_missing_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--deployment", str(tmp_path / "d.json"), "--max-wait-ms", "5000"]) == 2
    assert "ServingConfig.max_wait_ms must be in [0, 1000], got 5000.0" in capsys.readouterr().err
    assert main(["serve", "--deployment", str(tmp_path / "d.json"), "--log-url", f"sqlite:///{tmp_path / 'l.db'}"]) == 2
    assert "d.json: no deployment record (the deployment asset writes it)" in capsys.readouterr().err


def test_privacy_and_migration_flags(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = config_from_args(build_parser().parse_args(["serve", "--deployment", "d.json"]))
    assert (defaults.capture_text, defaults.text_retention_days, defaults.migrate_log) == (True, 30, True)
    args = build_parser().parse_args(
        ["serve", "--deployment", "d.json", "--no-capture-text", "--text-retention-days", "7", "--no-migrate"]
    )
    config = config_from_args(args)
    assert (config.capture_text, config.text_retention_days, config.migrate_log) == (False, 7, False)
    assert not defaults.accept_event_time
    assert config_from_args(build_parser().parse_args(["serve", "--deployment", "d.json", "--accept-event-time"])).accept_event_time
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at the terminal width; one line per paragraph
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--no-capture-text do not store request texts in the prediction log" in help_text
    assert "removes it after --text-retention-days" in help_text and "--no-migrate" in help_text
    assert "--accept-event-time let POST /predict and /feedback set the logged time with an X-Event-Time header" in help_text


def test_serve_refuses_a_bad_retention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--deployment", str(tmp_path / "d.json"), "--text-retention-days", "0"]) == 2
    assert "ServingConfig.text_retention_days must be an integer in [1, 3650], got 0" in capsys.readouterr().err


def test_a_no_migrate_replica_refuses_an_old_schema_naming_both_revisions(
    tmp_path: Path, serving_bundles: ServingBundles, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported)
    url = f"sqlite:///{tmp_path / 'old.db'}"
    make_old_log(url, "")
    assert main(["serve", "--deployment", str(deployment), "--log-url", url, "--no-migrate"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tlp serve: prediction log schema is at revision unversioned (tables made by create_all before migrations, "
        "i.e. 0001), expected 0004 (head); migrate it first: start one server without --no-migrate, or run "
        "`python -m tl_platform.serving.log_admin migrate --log-url URL`"
    )
