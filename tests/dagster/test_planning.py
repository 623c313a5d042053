"""The transfer plan, cost report and ROI curve materialised after the model stages, on the tiny BERT."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets import TRANSFER_ASSETS
from assets.planning import PLANNING_ASSETS, roi_curve
from tests.dagster.conftest import make_stage_resources, tiny_run_config
from tl_platform.cli import main
from tl_platform.economics.roi import RoiInputs, roi_model
from tl_platform.tracking.mlflow_tracker import search_runs

OWNER = {"ops": {"roi_curve": {"config": {"monitoring_owner": "ML platform on-call"}}}}


def materialisations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, object]]:
    return {
        event.materialization.asset_key.to_user_string(): {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def planned(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, object]], dict[str, object], dg.ExecuteInProcessResult]:
    resources = make_stage_resources(tmp_path_factory.mktemp("planning"))
    stages = resources.materialize(TRANSFER_ASSETS, run_config=tiny_run_config(tiny_bert_dir))
    assert stages.success
    result = resources.materialize(PLANNING_ASSETS, run_config=OWNER)
    assert result.success
    return materialisations(result), resources, stages


def test_the_plan_is_markdown_with_a_run_config_the_main_job_accepts(planned) -> None:
    meta, resources, _ = planned
    plan = meta["transfer_plan"]
    assert str(plan["plan"]).startswith("### Recommended: ")
    assert "Runner-up to benchmark against: " in str(plan["plan"])
    assert plan["labelled_examples"] == 990 and plan["smallest_class"] == 493
    inputs = plan["inputs"]
    assert inputs["unlabelled_texts"] == 693  # type: ignore[index]
    assert inputs["domain"]["excluded_domains"] == ["amazon"]  # type: ignore[index]
    run_config = plan["run_config"]
    assert set(run_config["ops"]) == {"domain_adapted_model", "task_model"}  # type: ignore[index]
    job = dg.Definitions(
        assets=TRANSFER_ASSETS,
        jobs=[dg.define_asset_job("main_job", selection=dg.AssetSelection.assets(*TRANSFER_ASSETS))],
        resources=resources,
    ).resolve_job_def("main_job")
    validated = dg.validate_run_config(job, run_config)  # type: ignore[arg-type]
    assert validated["ops"]["task_model"]["config"]["method"] == run_config["ops"]["task_model"]["config"]["method"]  # type: ignore[index]


def test_the_cost_report_prices_the_stage_runs_that_were_tracked(planned) -> None:
    meta, resources, stages = planned
    report = meta["cost_report"]
    runs = {r["tags"]["dagster.asset_key"]: r for r in search_runs(resources["mlflow"].settings())}  # type: ignore[attr-defined, index]
    measured = {stage: runs[stage] for stage in ("foundation_model", "domain_adapted_model", "task_model")}
    assert report["stage_runs"] == {stage: run["run_id"] for stage, run in measured.items()}
    assert all(run["tags"]["dagster.run_id"] == stages.run_id for run in measured.values())  # type: ignore[index]
    # every run is tagged with the device it ran on (here: the CPU cores this process may use)
    cores = {int(run["tags"]["tlp.device_count"]) for run in measured.values()}  # type: ignore[index]
    assert {run["tags"]["tlp.device_type"] for run in measured.values()} == {"cpu"}  # type: ignore[index]
    (n_cores,) = cores
    core_hours = sum((run["end_time"] - run["start_time"]) / 1000 / 3600 * n_cores for run in measured.values())  # type: ignore[operator]
    assert report["measured_device_hours"] == {"cpu": pytest.approx(core_hours)}
    assert report["measured_total_usd"] == pytest.approx(core_hours * 0.04)
    assert report["from_scratch_device_hours"] == pytest.approx(186_965.8, rel=1e-5)
    assert report["lora_device_hours"] == pytest.approx(37.393, rel=1e-4)
    assert report["crossover_daily_requests"] == pytest.approx(126_312.47, rel=1e-6)
    assert report["setup_cost_usd"] == pytest.approx(80_000 + core_hours * 0.04)
    assert str(report["cost_comparison"]).startswith("![cost comparison](data:image/png;base64,")
    table = str(report["cost_report"])
    assert "| domain_adapted_model | " in table and f"cpu x {n_cores}" in table
    assert "inferred: the run carries no device tag" not in table


def test_the_roi_curve_uses_the_cost_report_and_names_its_owner(planned) -> None:
    meta, _, _ = planned
    roi, costs = meta["roi_curve"], meta["cost_report"]
    assert roi["monitoring_owner"] == "ML platform on-call"
    assert roi["setup_cost_usd"] == costs["setup_cost_usd"] and roi["monthly_cost_usd"] == costs["monthly_running_cost_usd"]
    expected = roi_model(RoiInputs("x", setup_cost_usd=costs["setup_cost_usd"], monthly_cost_usd=costs["monthly_running_cost_usd"]))  # type: ignore[arg-type]
    assert roi["breakeven_month"] == expected.base.breakeven_month == 5
    assert roi["year_one_roi"] == pytest.approx(expected.base.year_one_roi)
    assert roi["breakeven_month_value_halved"] == 8
    assert str(roi["roi_curve"]).startswith("![ROI curve](data:image/png;base64,")
    assert str(roi["roi"]).startswith("### Breakeven month 5, year-1 ROI ")


def test_tlp_report_renders_what_the_assets_published(planned, tmp_path: Path) -> None:
    _, resources, _ = planned
    out = tmp_path / "proposal.html"
    assert main(["report", "--artifacts", resources["artifact_store"].root, "--out", str(out)]) == 0  # type: ignore[attr-defined]
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and "ML platform on-call" in page


def test_the_roi_curve_requires_an_owner(planned) -> None:
    _, resources, _ = planned
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"monitoring_owner"):
        resources.materialize([roi_curve])


def test_bad_cost_config_names_the_field(planned) -> None:
    _, resources, _ = planned
    from assets.planning import cost_report

    config = {"ops": {"cost_report": {"config": {"utilisation": 1.5}}}}
    with pytest.raises(ValueError, match=r"ComputeModel\.utilisation must be in \(0, 1\], got 1\.5"):
        resources.materialize([cost_report], run_config=config)
