"""ServingConfig validation and the deployment record: parsing, rules, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import (
    DeploymentRecord,
    DeploymentRecordError,
    VariantSpec,
    read_deployment_record,
    write_deployment_record,
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_batch_size", 0, r"ServingConfig.max_batch_size must be an integer in \[1, 1024\], got 0"),
        ("batch_workers", 65, r"ServingConfig.batch_workers must be an integer in \[1, 64\], got 65"),
        ("intra_op_threads", 1.5, r"ServingConfig.intra_op_threads must be an integer in \[1, 64\], got 1.5"),
        ("max_wait_ms", -1.0, r"ServingConfig.max_wait_ms must be in \[0, 1000\], got -1.0"),
        ("on_overlong", "drop", r"ServingConfig.on_overlong must be 'truncate' or 'reject', got 'drop'"),
        ("bucket_edges", (32, 16), r"ServingConfig.bucket_edges must be strictly ascending positive integers, got \[32, 16\]"),
        ("reload_interval_s", 0.0, r"ServingConfig.reload_interval_s must be in \[0.05, 3600\], got 0.0"),
        ("log_url", " ", "ServingConfig.log_url must be a SQLAlchemy URL"),
        ("text_retention_days", 0, r"ServingConfig.text_retention_days must be an integer in \[1, 3650\], got 0"),
        ("text_retention_days", 3651, r"ServingConfig.text_retention_days must be an integer in \[1, 3650\], got 3651"),
        ("text_retention_days", True, r"ServingConfig.text_retention_days must be an integer in \[1, 3650\], got True"),
        ("text_retention_days", "30", r"ServingConfig.text_retention_days must be an integer in \[1, 3650\], got '30'"),
        ("text_purge_interval_s", 0.5, r"ServingConfig.text_purge_interval_s must be in \[1, 86400\], got 0.5"),
        ("text_purge_interval_s", 86_401, r"ServingConfig.text_purge_interval_s must be in \[1, 86400\], got 86401"),
        ("capture_text", "no", "ServingConfig.capture_text must be true or false, got 'no'"),
        ("migrate_log", 0, "ServingConfig.migrate_log must be true or false, got 0"),
        ("accept_event_time", "yes", "ServingConfig.accept_event_time must be true or false, got 'yes'"),
        ("routing_salt", "", "ServingConfig.routing_salt must be a string of 1 to 128 characters, got ''"),
        ("routing_salt", "s" * 129, "ServingConfig.routing_salt must be a string of 1 to 128 characters, got 'sss"),
    ],
)
def test_serving_config_names_field_and_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServingConfig(deployment=Path("d.json"), **{field: value})  # type: ignore[arg-type]


def test_serving_config_defaults_capture_text_for_30_days_and_migrate() -> None:
    config = ServingConfig(deployment=Path("d.json"))
    assert (config.capture_text, config.text_retention_days, config.text_purge_interval_s, config.migrate_log) == (
        True, 30, 3600.0, True)
    assert config.to_json()["capture_text"] is True and config.to_json()["text_retention_days"] == 30


def test_serving_config_body_limit_follows_text_limits() -> None:
    config = ServingConfig(deployment=Path("d.json"), max_texts_per_request=2, max_text_chars=10)
    assert config.max_body_bytes == 2 * 10 * 6 + 65_536
    assert config.to_json()["deployment"] == "d.json"


GOOD = {
    "champion": {"version": "3", "bundle": "/b/champion", "precision": "int8"},
    "challenger": {"version": "4", "bundle": "/b/challenger", "precision": "fp32"},
    "challenger_share": 0.1,
    "shadow": False,
    "updated_at": "2025-01-02T03:04:05+00:00",
}


def test_record_round_trips_through_json() -> None:
    record = DeploymentRecord.from_json(GOOD)
    assert record.champion == VariantSpec("3", Path("/b/champion"), "int8")
    assert record.challenger == VariantSpec("4", Path("/b/challenger"), "fp32")
    assert record.challenger_share == 0.1
    assert record.to_json() == GOOD


def _with(**changes: object) -> dict[str, object]:
    return {**GOOD, **changes}


DIGEST = "0123456789abcdef" * 4


def test_record_with_experiment_salt_and_digests_round_trips_and_an_old_record_still_loads() -> None:
    data = _with(experiment_id="exp-2025-03", routing_salt="exp-2025-03/salt",
                 champion={"version": "3", "bundle": "/b/champion", "precision": "int8", "bundle_sha256": DIGEST})
    record = DeploymentRecord.from_json(data)
    assert (record.experiment_id, record.routing_salt, record.champion.bundle_sha256) == ("exp-2025-03", "exp-2025-03/salt", DIGEST)
    assert record.challenger is not None and record.challenger.bundle_sha256 is None
    assert record.to_json() == data
    assert DeploymentRecord.from_json(record.to_json()) == record
    old = DeploymentRecord.from_json(GOOD)  # written before these fields: loads, and writes none of them back
    assert (old.experiment_id, old.routing_salt, old.champion.bundle_sha256) == (None, None, None)
    assert set(old.to_json()) == set(GOOD) and set(old.to_json()["champion"]) == set(GOOD["champion"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object, got list"),
        ({k: v for k, v in GOOD.items() if k != "champion"}, "champion is required"),
        (_with(extra=1), r"unknown keys \['extra'\]"),
        (_with(challenger_share=1.5), r"challenger_share must be a number in \[0, 1\], got 1.5"),
        (_with(challenger_share="0.1"), r"challenger_share must be a number in \[0, 1\], got '0.1'"),
        (_with(challenger=None), "challenger_share must be 0 when challenger is null, got 0.1"),
        (_with(challenger=None, challenger_share=0, shadow=True), "shadow mode needs a challenger"),
        (_with(shadow=True), "challenger_share must be 0 in shadow mode"),
        (_with(shadow="yes"), "shadow must be true or false, got 'yes'"),
        (_with(champion={"version": "", "bundle": "/b"}), "champion.version must be a non-empty string"),
        (_with(champion={"version": "1", "bundle": "/b", "precision": "int4"}), r"champion.precision must be one of \['int8', 'fp32', 'torch'\], got 'int4'"),
        (_with(champion={"version": "1", "bundle": "/b", "precision": "torch"}), "champion.torch_bundle is required when precision is 'torch'"),
        (_with(champion={"version": "1", "bundle": "/b", "size": 3}), r"champion has unknown keys \['size'\]"),
        (_with(updated_at=5), "updated_at must be an ISO time string, got 5"),
        (_with(experiment_id=""), r"experiment_id must be null or a string of 1 to 128 printable characters without surrounding whitespace, got ''"),
        (_with(experiment_id=" exp"), r"experiment_id must be null or a string of 1 to 128 .*, got ' exp'"),
        (_with(experiment_id="e" * 129), r"experiment_id must be null or a string of 1 to 128 .*, got 'eee"),
        (_with(experiment_id=7), r"experiment_id must be null or a string of 1 to 128 .*, got 7"),
        (_with(routing_salt="a\nb"), r"routing_salt must be null or a string of 1 to 128 printable characters .*, got 'a\\nb'"),
        (_with(champion={"version": "1", "bundle": "/b", "bundle_sha256": DIGEST.upper()}),
         r"champion.bundle_sha256 must be null or 64 lowercase hex characters \(the SHA-256 of the bundle's manifest.json\), got '0123"),
        (_with(champion={"version": "1", "bundle": "/b", "bundle_sha256": DIGEST[:63]}), r"champion.bundle_sha256 must be null or 64 lowercase hex"),
        (_with(challenger={"version": "1", "bundle": "/b", "bundle_sha256": 5}), r"challenger.bundle_sha256 must be null or 64 lowercase hex .*, got 5"),
    ],
)
def test_bad_records_are_refused_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(DeploymentRecordError, match=message):
        DeploymentRecord.from_json(data)


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "deployment.json"
    record = DeploymentRecord.from_json(GOOD)
    write_deployment_record(path, record)
    write_deployment_record(path, DeploymentRecord.from_json(_with(challenger_share=0.5)))
    assert [p.name for p in path.parent.iterdir()] == ["deployment.json"]
    assert json.loads(path.read_text())["challenger_share"] == 0.5
    assert read_deployment_record(path).challenger_share == 0.5


def test_read_names_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DeploymentRecordError, match="no deployment record"):
        read_deployment_record(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeploymentRecordError, match=r"bad.json: not valid JSON \(Expecting property name"):
        read_deployment_record(bad)
    bad.write_text(json.dumps(_with(challenger_share=-0.1)))
    with pytest.raises(DeploymentRecordError, match=r"bad.json: challenger_share must be a number in \[0, 1\]"):
        read_deployment_record(bad)


def test_torch_variant_carries_its_task_bundle() -> None:
    data = _with(champion={"version": "1", "bundle": "/e", "precision": "torch", "torch_bundle": "/t"})
    record = DeploymentRecord.from_json(data)
    assert record.champion.torch_bundle == Path("/t")
    assert record.to_json()["champion"] == {"version": "1", "bundle": "/e", "precision": "torch", "torch_bundle": "/t"}
