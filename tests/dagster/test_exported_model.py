"""exported_model on the tiny BERT: gates as blocking checks, registry version and aliases."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets import TRANSFER_ASSETS, exported_model
from tests.dagster.conftest import make_stage_resources, tiny_run_config
from tl_platform.checkpoints import verify_bundle
from tl_platform.tracking.mlflow_tracker import registered_versions, version_by_alias

FAST_TASK = {"domain_adapted_model": {"enabled": False}, "task_model": {"epochs": 2, "min_test_accuracy": 0.0}}


def export_config(**overrides: object) -> dict[str, object]:
    return {"latency_requests": 20, "latency_budget_p99_ms": 1000.0, **overrides}


@pytest.fixture(scope="module")
def exported_twice(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dg.ExecuteInProcessResult], dict[str, object]]:
    resources = make_stage_resources(tmp_path_factory.mktemp("exported"))
    config = tiny_run_config(tiny_bert_dir, **FAST_TASK)
    config["ops"]["exported_model"] = {"config": export_config()}  # type: ignore[index]
    first = resources.materialize([*TRANSFER_ASSETS, exported_model], run_config=config)
    second = resources.materialize(
        [exported_model], run_config={"ops": {"exported_model": {"config": export_config()}}}
    )
    return [first, second], resources


def test_gates_pass_with_their_numbers(exported_twice: tuple[list[dg.ExecuteInProcessResult], dict[str, object]]) -> None:
    (first, _), _ = exported_twice
    checks = {e.check_name: e for e in first.get_asset_check_evaluations() if e.asset_key.to_user_string() == "exported_model"}
    assert set(checks) == {"onnx_fp32_parity", "int8_agreement_and_accuracy", "single_request_latency_p99"}
    assert all(check.passed for check in checks.values())
    assert checks["onnx_fp32_parity"].metadata["max_abs_logit_diff"].value < 1e-3
    assert checks["single_request_latency_p99"].metadata["p99_ms"].value > 0


def test_first_export_is_champion_second_is_challenger(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], dict[str, object]],
) -> None:
    results, resources = exported_twice
    settings = resources["mlflow"].settings()  # type: ignore[attr-defined]
    assert sorted(v.version for v in registered_versions(settings, "tlp-classifier")) == ["1", "2"]
    champion = version_by_alias(settings, "tlp-classifier", "champion")
    challenger = version_by_alias(settings, "tlp-classifier", "challenger")
    assert champion is not None and champion.version == "1"
    assert challenger is not None and challenger.version == "2"
    assert champion.tags is not None
    verify_bundle(Path(champion.tags["bundle_path"]), expected_stage="exported")
    metadata = results[1].get_asset_materialization_events()[0].materialization.metadata
    assert metadata["alias"].value == "challenger"


def test_a_failed_gate_blocks_registration(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], dict[str, object]],
) -> None:
    _, resources = exported_twice
    config = {"ops": {"exported_model": {"config": export_config(latency_budget_p99_ms=1e-6)}}}
    result = resources.materialize([exported_model], run_config=config, raise_on_error=False)
    (latency,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "single_request_latency_p99"]
    assert not latency.passed
    assert latency.metadata["p99_ms"].value > latency.metadata["budget_p99_ms"].value
    settings = resources["mlflow"].settings()  # type: ignore[attr-defined]
    assert len(registered_versions(settings, "tlp-classifier")) == 2  # nothing new registered


def test_deployment_records_aliases_split_and_shadow(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], dict[str, object]],
) -> None:
    from assets import deployment
    from tl_platform.serving.deployment import read_deployment_record

    _, resources = exported_twice
    config = {"ops": {"deployment": {"config": {"challenger_share": 0.25}}}}
    result = resources.materialize([deployment], run_config=config)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert (meta["champion_version"].value, meta["challenger_version"].value) == ("1", "2")
    record = read_deployment_record(resources["deployment_target"].path())  # type: ignore[attr-defined]
    assert (record.champion.version, record.challenger.version if record.challenger else None) == ("1", "2")
    assert record.challenger_share == 0.25 and not record.shadow
    assert record.champion.precision == "int8"

    shadow = {"ops": {"deployment": {"config": {"shadow": True}}}}
    resources.materialize([deployment], run_config=shadow)
    assert read_deployment_record(resources["deployment_target"].path()).shadow  # type: ignore[attr-defined]


def test_deployment_without_a_champion_says_what_to_do(tmp_path: Path) -> None:
    from assets import deployment

    with pytest.raises(Exception, match=r"tlp-classifier has no 'champion' alias; materialise exported_model first"):
        make_stage_resources(tmp_path).materialize([deployment])
