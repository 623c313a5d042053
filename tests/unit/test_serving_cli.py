"""`tlp serve` and `python -m tl_platform.serving`: flags become a validated ServingConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_platform.cli import build_parser, main
from tl_platform.serving.server import config_from_args


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
