"""An export whose INT8 fails its gate still serves: FP32 registered, deployed and answering over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from assets import TRANSFER_ASSETS, deployment, exported_model
from tests.dagster.conftest import Stages, make_stage_resources, tiny_run_config
from tests.flipping_quantiser import flipping_quantiser
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import read_deployment_record
from tl_platform.tracking.mlflow_tracker import registered_versions, registered_versions_with_aliases

FAST_TASK: dict[str, dict[str, object]] = {"domain_adapted_model": {"enabled": False}, "task_model": {"epochs": 2, "min_test_accuracy": 0.0}}
EXPORT = {"latency_requests": 20, "latency_budget_p99_ms": 1000.0}


@pytest.fixture(scope="module")
def fallback(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dg.ExecuteInProcessResult, Stages]]:
    resources = make_stage_resources(tmp_path_factory.mktemp("fallback"))
    config = tiny_run_config(tiny_bert_dir, **FAST_TASK)
    config["ops"]["exported_model"] = {"config": EXPORT}  # type: ignore[index]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tl_platform.export.exported_bundle.quantize_int8", flipping_quantiser)
        yield resources.materialize([*TRANSFER_ASSETS, exported_model], run_config=config), resources


def test_a_failed_int8_gate_warns_and_registers_an_fp32_bundle(fallback: tuple[dg.ExecuteInProcessResult, Stages]) -> None:
    result, resources = fallback
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == "exported_model"}
    int8 = checks["int8_agreement_and_accuracy"]
    assert not int8.passed and int8.severity == dg.AssetCheckSeverity.WARN
    assert int8.metadata["serving_precision"].value == "fp32" and int8.metadata["blocking"].value is False
    assert int8.metadata["label_agreement"].value == 0.0 and int8.metadata["validation_label_agreement"].value == 0.0
    assert str(int8.metadata["reason"].value).endswith("FP32 serves (it passed parity with PyTorch)")
    assert checks["onnx_fp32_parity"].passed and checks["single_request_latency_p99"].passed
    assert checks["single_request_latency_p99"].metadata["precision"].value == "fp32"
    materialisation = next(e for e in result.get_asset_materialization_events()
                           if e.materialization.asset_key.to_user_string() == "exported_model").materialization
    metadata = {k: v.value for k, v in materialisation.metadata.items()}
    assert (metadata["serving_precision"], metadata["int8_gate"], metadata["int8_serves"]) == ("fp32", "failed, not blocking", 0.0)
    ((version, _, tags),) = registered_versions_with_aliases(resources["mlflow"].settings(), "tlp-classifier")
    assert (version, tags["tlp.precision"], tags["tlp.int8_gate"], tags["tlp.gates"]) == (
        "1", "fp32", "failed, not blocking", "passed")


def test_the_deployment_serves_it_in_fp32_and_refuses_int8(fallback: tuple[dg.ExecuteInProcessResult, Stages], tmp_path: Path) -> None:
    _, resources = fallback
    resources.materialize([deployment])
    record = read_deployment_record(resources["deployment_target"].path())
    assert (record.champion.version, record.champion.precision) == ("1", "fp32")

    forced = resources.materialize([deployment], run_config={"ops": {"deployment": {"config": {"precision": "int8"}}}},
                                   raise_on_error=False)
    assert not forced.success
    failure = next(e for e in forced.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "tlp-classifier v1: precision int8 was asked for, but its export serves fp32" in str(failure.step_failure_data.error)
    assert read_deployment_record(resources["deployment_target"].path()).champion.precision == "fp32"  # unchanged

    app = create_app(ServingConfig(deployment=resources["deployment_target"].path(), log_url=f"sqlite:///{tmp_path / 'log.db'}"))
    with TestClient(app) as client:
        response = client.post("/predict", json={"texts": ["great phone, works well", "broke after a day"]})
        assert response.status_code == 200
        body = response.json()
        assert body["model_version"] == "1" and len(body["predictions"]) == 2
        assert 'tlp_model_info{precision="fp32",variant="champion",version="1"} 1.0' in client.get("/metrics").text


def test_require_int8_fails_the_export_and_registers_nothing(fallback: tuple[dg.ExecuteInProcessResult, Stages]) -> None:
    _, resources = fallback
    config = {"ops": {"exported_model": {"config": {**EXPORT, "require_int8": True}}}}
    result = resources.materialize([exported_model], run_config=config, raise_on_error=False)
    assert not result.success
    int8 = resources.check_evaluation("exported_model", "int8_agreement_and_accuracy")
    assert not int8.passed and int8.severity == dg.AssetCheckSeverity.ERROR and int8.target_materialization_data is None
    assert str(int8.description).endswith("require_int8 is set, so the export fails")
    assert len(registered_versions(resources["mlflow"].settings(), "tlp-classifier")) == 1
