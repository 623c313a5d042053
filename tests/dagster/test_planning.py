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


def test_the_plan_is_markdown_with_a_run_config_the_main_job_accepts(planned, tiny_bert_dir: Path) -> None:
    meta, resources, _ = planned
    plan = meta["transfer_plan"]
    assert str(plan["plan"]).startswith("### Recommended: ")
    assert "Runner-up to benchmark against: " in str(plan["plan"])
    assert plan["labelled_examples"] == 990 and plan["smallest_class"] == 493
    inputs = plan["inputs"]
    assert inputs["unlabelled_texts"] == 693  # type: ignore[index]
    assert inputs["domain"]["excluded_domains"] == ["amazon"]  # type: ignore[index]
    run_config = plan["run_config"]
    # the recipe's choices, and the data and foundation model the plan measured
    assert set(run_config["ops"]) == {"labelled_data", "foundation_model", "domain_adapted_model", "task_model"}  # type: ignore[index]
    assert run_config["ops"]["labelled_data"]["config"]["domain"] == "amazon"  # type: ignore[index]
    assert run_config["ops"]["foundation_model"]["config"]["source"] == str(tiny_bert_dir)  # type: ignore[index]
    job = dg.Definitions(
        assets=TRANSFER_ASSETS,
        jobs=[dg.define_asset_job("main_job", selection=dg.AssetSelection.assets(*TRANSFER_ASSETS))],
        resources=resources.resources,
    ).resolve_job_def("main_job")
    validated = dg.validate_run_config(job, run_config)  # type: ignore[arg-type]
    assert validated["ops"]["task_model"]["config"]["method"] == run_config["ops"]["task_model"]["config"]["method"]  # type: ignore[index]


def test_the_plan_measures_token_lengths_and_sets_max_length_for_the_stages_that_cut_text(planned) -> None:
    meta, _, _ = planned
    plan = meta["transfer_plan"]
    # the tiny tokenizer: one token a word, so the bundled sentences run well under the floor of 64
    percentiles = plan["token_length_percentiles"]
    assert set(percentiles) == {"p50", "p90", "p95", "p99"} and 0 < percentiles["p95"] <= 64  # type: ignore[index, operator]
    assert plan["max_length"] == 64 and plan["max_length_bound_by"] == "floor"
    assert plan["truncated_share"]["512"] == 0.0  # type: ignore[index]
    assert plan["inputs"]["model_window"]["limit"] == 128  # type: ignore[index]  # the tiny BERT's positions
    ops = plan["run_config"]["ops"]  # type: ignore[index]
    assert ops["task_model"]["config"]["max_length"] == 64 and ops["domain_adapted_model"]["config"]["max_length"] == 64
    assert "#### Sequence length" in str(plan["plan"]) and "max_length 64: p95 of 990 texts" in str(plan["plan"])


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


def test_the_report_renders_what_the_catalogue_names(planned, tmp_path: Path) -> None:
    from resources.catalogue import locate
    from tl_platform.economics.report import PROPOSAL_CATALOGUE_SPECS, load_proposal, render_proposal_html

    _, resources, _ = planned
    directories = locate(resources.instance, resources["stage_store"], PROPOSAL_CATALOGUE_SPECS)
    assert set(directories) == set(PROPOSAL_CATALOGUE_SPECS)
    page = render_proposal_html(load_proposal(*(Path(directories[spec]) for spec in PROPOSAL_CATALOGUE_SPECS)))
    assert page.count("data:image/png;base64,") == 2 and "ML platform on-call" in page


def test_tlp_report_without_materialisations_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    assert main(["report", "--out", str(tmp_path / "proposal.html")]) == 1
    err = capsys.readouterr().err
    assert "transfer_plan has never been materialised in this Dagster instance" in err
    assert "materialise transfer_plan, cost_report and roi_curve first" in err
    assert not (tmp_path / "proposal.html").exists()


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


def test_plan_then_run_trains_on_the_users_csv(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """`tlp plan --data ... --write plan.yaml` then `tlp run --config plan.yaml`: the run reads the user's file."""
    from tl_platform.cli import build_parser, run_config_from_args

    rows = [(f"the blender {i} works and I love it", "pos") for i in range(120)]
    rows += [(f"the blender {i} broke and I want a refund", "neg") for i in range(120)]
    data = tmp_path / "my reviews.csv"
    data.write_text("body,verdict\n" + "".join(f"{text},{label}\n" for text, label in rows))
    plan_file = tmp_path / "plan.yaml"
    assert main([
        "plan", "--data", str(data), "--labels", "neg,pos", "--text-column", "body", "--label-column", "verdict",
        "--foundation", str(tiny_bert_dir), "--max-texts", "60", "--write", str(plan_file),
    ]) == 0
    config = run_config_from_args(build_parser().parse_args(["run", "--config", str(plan_file), "--epochs", "1"]))
    assert config["ops"]["labelled_data"]["config"]["path"] == str(data.resolve())
    config["ops"]["task_model"]["config"]["min_test_accuracy"] = 0.0
    config["ops"]["domain_adapted_model"]["config"].update({"epochs": 1, "head_warmup_epochs": 1})
    resources = make_stage_resources(tmp_path / "state")
    result = resources.materialize(TRANSFER_ASSETS, run_config=config)  # type: ignore[arg-type]
    meta = materialisations(result)
    assert meta["labelled_data"]["source"] == str(data.resolve()) and meta["labelled_data"]["rows_kept"] == 240
    assert meta["labelled_data"]["split_sizes"] == {"train": 168, "validation": 24, "test": 48}
    assert meta["foundation_model"]["source"] == str(tiny_bert_dir)
    assert meta["task_model"]["per_class"].keys() == {"neg", "pos"}  # type: ignore[union-attr]
