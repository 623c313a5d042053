"""exported_model on the tiny BERT: gates that fail the step, candidate versions, and promotion of aliases."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import requests

from assets import TRANSFER_ASSETS, exported_model
from resources import MlflowTracking
from tests.dagster.conftest import Stages, make_stage_resources, tiny_run_config
from tl_platform.checkpoints import verify_bundle
from tl_platform.tracking.mlflow_tracker import (
    registered_versions,
    registered_versions_with_aliases,
    runs_with_tag,
    version_by_alias,
)

FAST_TASK = {"domain_adapted_model": {"enabled": False}, "task_model": {"epochs": 2, "min_test_accuracy": 0.0}}


def export_config(**overrides: object) -> dict[str, object]:
    return {"latency_requests": 20, "latency_budget_p99_ms": 1000.0, **overrides}


@pytest.fixture(scope="module")
def exported_twice(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dg.ExecuteInProcessResult], Stages]:
    resources = make_stage_resources(tmp_path_factory.mktemp("exported"))
    config = tiny_run_config(tiny_bert_dir, **FAST_TASK)
    config["ops"]["exported_model"] = {"config": export_config()}  # type: ignore[index]
    first = resources.materialize([*TRANSFER_ASSETS, exported_model], run_config=config)
    second = resources.materialize(
        [exported_model], run_config={"ops": {"exported_model": {"config": export_config()}}}
    )
    return [first, second], resources


def test_gates_pass_with_their_numbers(exported_twice: tuple[list[dg.ExecuteInProcessResult], Stages]) -> None:
    (first, _), _ = exported_twice
    checks = {e.check_name: e for e in first.get_asset_check_evaluations() if e.asset_key.to_user_string() == "exported_model"}
    assert set(checks) == {"onnx_fp32_parity", "int8_agreement_and_accuracy", "single_request_latency_p99",
                           "batch_independent_answers"}
    assert all(check.passed for check in checks.values())
    assert checks["onnx_fp32_parity"].metadata["max_abs_logit_diff"].value < 1e-3
    assert checks["single_request_latency_p99"].metadata["p99_ms"].value > 0


def test_exports_register_candidates_and_move_no_alias(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], Stages],
) -> None:
    results, resources = exported_twice
    settings = resources["mlflow"].settings()
    versions = registered_versions_with_aliases(settings, "tlp-classifier")
    assert [(v, aliases, tags["tlp.status"], tags["tlp.gates"]) for v, aliases, tags in versions] == [
        ("2", [], "candidate", "passed"), ("1", [], "candidate", "passed")
    ]
    assert version_by_alias(settings, "tlp-classifier", "champion") is None
    metadata = {k: v.value for k, v in results[1].get_asset_materialization_events()[0].materialization.metadata.items()}
    assert (metadata["registered_version"], metadata["status"]) == ("2", "candidate")
    # the second run exported the task model the first run trained: the newest one, and it says so
    read = metadata["upstream_versions"]["task_model"]  # type: ignore[index]
    assert (read["run_id"], read["how"]) == (results[0].run_id, "latest materialisation")
    verify_bundle(Path(str(metadata["bundle"])), expected_stage="exported")


def test_a_failed_gate_registers_nothing_and_materialises_nothing(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], Stages],
) -> None:
    results, resources = exported_twice
    config = {"ops": {"exported_model": {"config": export_config(latency_budget_p99_ms=1e-6)}}}
    result = resources.materialize([exported_model], run_config=config, raise_on_error=False)
    assert not result.success
    latency = resources.check_evaluation("exported_model", "single_request_latency_p99")
    assert not latency.passed and latency.target_materialization_data is None
    assert latency.metadata["p99_ms"].value > latency.metadata["budget_p99_ms"].value
    assert resources.latest_run_of("exported_model") == results[1].run_id  # the catalogue still shows the good one
    settings = resources["mlflow"].settings()
    assert len(registered_versions(settings, "tlp-classifier")) == 2  # nothing new registered


def test_deployment_bootstraps_a_champion_and_promotion_owns_the_aliases(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], Stages],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from assets import deployment
    from tl_platform.cli import main
    from tl_platform.export.precision import recorded_precision
    from tl_platform.serving.deployment import read_deployment_record

    results, resources = exported_twice
    settings = resources["mlflow"].settings()
    first = resources.materialize([deployment])
    meta = {k: v.value for k, v in first.get_asset_materialization_events()[0].materialization.metadata.items()}
    # the registry had no champion: the export this run's lineage names (the newest, v2) becomes it, with a reason
    assert (meta["champion_version"], meta["challenger_version"], meta["candidate_version"]) == ("2", "none", "2")
    assert meta["bootstrap_promotion"]["reason"].startswith("first servable version")  # type: ignore[index]
    champion = version_by_alias(settings, "tlp-classifier", "champion")
    assert champion is not None and champion.tags is not None
    assert champion.tags["tlp.status"] == "champion" and champion.tags["tlp.champion.actor"] == f"dagster run {first.run_id}"

    # a second deployment moves nothing; only a promotion does, by command, and says why
    resources.materialize([deployment])
    assert version_by_alias(settings, "tlp-classifier", "champion").version == "2"  # type: ignore[union-attr]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    promote = ["promote", "1", "--alias", "challenger", "--reason", "retrained on fresh data", "--experiment", "tests"]
    assert main(promote) == 0
    assert "challenger vnone -> v1 (retrained on fresh data)" in capsys.readouterr().out
    assert main(promote) == 0  # idempotent: the alias already names v1
    assert "challenger already names v1; nothing changed" in capsys.readouterr().out
    assert main(["promote", "2", "--alias", "challenger", "--reason", "x", "--experiment", "tests"]) == 1
    assert "v2 is the champion; a challenger must be another version" in capsys.readouterr().err
    assert main(["models", "--experiment", "tests"]) == 0
    listing = capsys.readouterr().out
    assert "v2     champion" in listing and "v1     challenger" in listing and "retrained on fresh data" in listing

    config = {"ops": {"deployment": {"config": {"challenger_share": 0.25}}}}
    resources.materialize([deployment], run_config=config)
    record = read_deployment_record(resources["deployment_target"].path())
    assert (record.champion.version, record.challenger.version if record.challenger else None) == ("2", "1")
    assert record.challenger_share == 0.25 and not record.shadow
    # by default each bundle serves in the precision its export chose (int8 where INT8 passed its gate)
    assert [v.precision for v in (record.champion, record.challenger)] == [  # type: ignore[union-attr]
        recorded_precision(v.bundle) for v in (record.champion, record.challenger)  # type: ignore[union-attr]
    ]
    exported = {m.materialization.metadata["registered_version"].value: m.materialization.metadata["bundle_sha256"].value
                for r in results for m in r.get_asset_materialization_events()
                if m.materialization.asset_key.to_user_string() == "exported_model"}
    assert (record.champion.bundle_sha256, record.challenger.bundle_sha256) == (exported["2"], exported["1"])  # type: ignore[union-attr]

    shadow = {"ops": {"deployment": {"config": {"shadow": True}}}}
    resources.materialize([deployment], run_config=shadow)
    assert read_deployment_record(resources["deployment_target"].path()).shadow


def test_deployment_without_an_export_says_what_to_do(tmp_path: Path) -> None:
    from assets import deployment

    with pytest.raises(Exception, match=r"exported_model has never been materialised; materialise exported_model first"):
        make_stage_resources(tmp_path).materialize([deployment])


def test_a_tracking_outage_while_registering_is_retried_and_leaves_nothing_half_registered(
    exported_twice: tuple[list[dg.ExecuteInProcessResult], Stages], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store drops the registration call once: the step retries, the failed attempt's run is marked failed
    and owns no version, and exactly one new version is registered, by the attempt that succeeded."""
    from mlflow.tracking import MlflowClient

    _, resources = exported_twice
    settings = resources["mlflow"].settings()
    before = {v.version for v in registered_versions(settings, "tlp-classifier")}
    register = MlflowClient.create_model_version
    calls: list[str] = []

    def drops_once(client: MlflowClient, *args: object, **kwargs: object) -> object:
        calls.append(str(kwargs.get("run_id")))
        if len(calls) == 1:
            raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/model-versions/create")
        return register(client, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MlflowClient, "create_model_version", drops_once)
    tracking = resources["mlflow"]
    monkeypatch.setitem(resources.resources, "mlflow", MlflowTracking(
        tracking_uri=tracking.tracking_uri, experiment_name=tracking.experiment_name,
        artifact_location=tracking.artifact_location, ui_base_url=tracking.ui_base_url, unavailable_wait_s=0.0))
    result = resources.materialize([exported_model], run_config={"ops": {"exported_model": {"config": export_config()}}})
    assert result.success
    retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert [e.step_key for e in retries] == ["exported_model"]
    after = registered_versions(settings, "tlp-classifier")
    (new,) = [v for v in after if v.version not in before]
    runs = {str(run["run_id"]): run for run in runs_with_tag(settings, "dagster.run_id", result.run_id)}
    assert sorted(str(run["status"]) for run in runs.values()) == ["FAILED", "FINISHED"]
    failed = next(run_id for run_id, run in runs.items() if run["status"] == "FAILED")
    assert calls[0] == failed and new.source.startswith(f"runs:/{calls[1]}/") and calls[1] != failed
    assert all(not v.source.startswith(f"runs:/{failed}/") for v in after)  # the failed attempt owns no version
