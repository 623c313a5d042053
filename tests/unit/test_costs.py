"""The cost report: measured stage costs from run records, the FLOPs arithmetic, the 7B reference figures, and
the API/self-host crossover."""

from __future__ import annotations

from typing import Any

import pytest

from tl_platform.economics.compute import (
    ComputeModel,
    device_hours,
    estimate_alternatives,
    same_data_lora_hours,
    training_flops,
)
from tl_platform.economics.cost_report import CostSettings, build_cost_report
from tl_platform.economics.costs import INFERRED_CPU, PriceTable, price_stage_runs, select_stage_runs
from tl_platform.economics.serving import (
    ApiPricing,
    SelfHosting,
    crossover_daily_requests,
    serving_costs,
)


def run_record(stage: str, start_ms: int, seconds: float, status: str = "FINISHED", **tags: str) -> dict[str, Any]:
    """One run as ``search_runs`` returns it."""
    return {
        "run_id": f"{stage}-{start_ms}",
        "name": stage,
        "status": status,
        "start_time": start_ms,
        "end_time": start_ms + int(seconds * 1000) if status != "RUNNING" else None,
        "params": {},
        "metrics": {},
        "tags": {"dagster.asset_key": stage, "dagster.run_id": tags.pop("dagster_run", "d1"), **tags},
    }


RUNS = [
    run_record("foundation_model", 1_000, 60.0),
    run_record("domain_adapted_model", 2_000, 1800.0),
    run_record("task_model", 3_000, 3600.0),
    run_record("task_model", 9_000, 7200.0, status="FAILED"),  # newer but failed: not counted
    run_record("task_model", 500, 10.0, dagster_run="d0"),  # older: not counted
    run_record("cost_report", 9_500, 99.0),  # not a measured stage
]


class TestFlops:
    def test_training_flops_is_six_n_t(self) -> None:
        assert training_flops(7e9, 2e12) == 8.4e22
        assert training_flops(22_713_216, 1_000) == 6 * 22_713_216 * 1_000 == 136_279_296_000
        assert training_flops(7e9, 1e9, flops_per_parameter_token=4.0) == 2.8e19

    def test_device_hours_divide_by_achieved_throughput(self) -> None:
        assert device_hours(312e12 * 0.4 * 3600, 312e12, 0.4) == pytest.approx(1.0)
        assert device_hours(8.4e22, 312e12, 0.4) == pytest.approx(186_965.81197, abs=1e-5)

    def test_the_7b_defaults_land_within_a_factor_of_2_of_the_reference_figures(self) -> None:
        """The inputs that produce them: 7B parameters on A100s (312 TFLOP/s BF16) at 40 % utilisation; 6 FLOPs a
        parameter a token (4 for LoRA's frozen base); 2T tokens from scratch, 100B continued pretraining, 2B x 4
        epochs full fine-tune, 200M x 3 epochs LoRA."""
        model = ComputeModel()
        assert (model.parameters, model.peak_flops_per_device, model.utilisation, model.device) == (7e9, 312e12, 0.40, "a100")
        assert (model.pretraining_tokens, model.continued_pretraining_tokens) == (2e12, 1e11)
        assert (model.fine_tune_tokens, model.fine_tune_epochs, model.lora_tokens, model.lora_epochs) == (2e9, 4.0, 2e8, 3.0)
        assert model.lora_flops_per_parameter_token == 4.0
        hours = {a.recipe: a.device_hours for a in estimate_alternatives(model, PriceTable())}
        assert hours == pytest.approx(
            {"from_scratch": 186_965.8, "continued_pretraining": 9_348.3, "full_fine_tune": 747.86, "lora": 37.393}, rel=1e-4
        )
        reference = {"from_scratch": 180_000, "continued_pretraining": 12_000, "full_fine_tune": 800, "lora": 40}
        for recipe, figure in reference.items():
            assert 0.5 <= hours[recipe] / figure <= 2.0, recipe

    def test_lora_on_the_same_data_saves_a_third(self) -> None:
        model = ComputeModel()
        full = next(a for a in estimate_alternatives(model, PriceTable()) if a.recipe == "full_fine_tune")
        assert same_data_lora_hours(model) == pytest.approx(full.device_hours * 4 / 6)

    def test_alternatives_are_priced_per_device_hour(self) -> None:
        (scratch, *_rest) = estimate_alternatives(ComputeModel(), PriceTable(a100_hour_usd=1.5))
        assert scratch.cost_usd == pytest.approx(scratch.device_hours * 1.5)


class TestMeasuredStages:
    def test_newest_finished_run_of_each_stage_on_an_inferred_cpu(self) -> None:
        runs = select_stage_runs(RUNS, cpu_cores=2)
        assert [(r.stage, r.run_id, r.wall_clock_seconds) for r in runs] == [
            ("foundation_model", "foundation_model-1000", 60.0),
            ("domain_adapted_model", "domain_adapted_model-2000", 1800.0),
            ("task_model", "task_model-3000", 3600.0),
        ]
        assert {(r.device_type, r.device_count, r.device_source) for r in runs} == {("cpu", 2, INFERRED_CPU)}
        costs = price_stage_runs(runs, PriceTable(cpu_core_hour_usd=0.04))
        assert [c.device_hours for c in costs] == pytest.approx([60 / 3600 * 2, 1.0, 2.0])
        assert costs[2].cost_usd == pytest.approx(0.08)

    def test_the_export_stage_is_measured_when_it_ran(self) -> None:
        with_export = [*RUNS, run_record("exported_model", 4_000, 120.0), run_record("exported_model", 5_000, 1.0, status="FAILED")]
        stages = select_stage_runs(with_export, cpu_cores=2)
        assert [(r.stage, r.wall_clock_seconds) for r in stages][-1] == ("exported_model", 120.0)
        assert len(select_stage_runs(RUNS, cpu_cores=2)) == 3

    def test_a_device_tag_wins_over_the_cpu_inference(self) -> None:
        runs = [
            run_record("foundation_model", 1, 10.0),
            run_record("domain_adapted_model", 2, 10.0, skipped="true"),
            run_record("task_model", 3, 1800.0, **{"tlp.device_type": "A100", "tlp.device_count": "4"}),
        ]
        task = select_stage_runs(runs, cpu_cores=8)[2]
        assert (task.device_type, task.device_count, task.device_source) == ("a100", 4, "tag tlp.device_type")
        assert select_stage_runs(runs, cpu_cores=8)[1].skipped is True
        (cost,) = price_stage_runs([task], PriceTable(a100_hour_usd=2.0))
        assert (cost.device_hours, cost.cost_usd) == pytest.approx((2.0, 4.0))

    def test_one_dagster_run_can_be_chosen(self) -> None:
        runs = [*RUNS, run_record("foundation_model", 100, 5.0, dagster_run="d0"),
                run_record("domain_adapted_model", 200, 5.0, dagster_run="d0")]
        chosen = select_stage_runs(runs, cpu_cores=2, dagster_run_id="d0")
        assert [r.run_id for r in chosen] == ["foundation_model-100", "domain_adapted_model-200", "task_model-500"]

    def test_a_stage_without_a_finished_run_is_named(self) -> None:
        with pytest.raises(ValueError, match=r"no finished tracked run of \['domain_adapted_model'\]; materialise domain_adapted_model first"):
            select_stage_runs([r for r in RUNS if r["tags"]["dagster.asset_key"] != "domain_adapted_model"], cpu_cores=2)
        with pytest.raises(ValueError, match=r"in Dagster run nope"):
            select_stage_runs(RUNS, cpu_cores=2, dagster_run_id="nope")

    def test_bad_device_tags_are_refused(self) -> None:
        bad = [run_record("foundation_model", 1, 1.0, **{"tlp.device_type": "tpu"})]
        with pytest.raises(ValueError, match=r"tag tlp\.device_type='tpu' is not one of \['cpu', 'a100', 'h100'\]"):
            select_stage_runs(bad, cpu_cores=2, stages=("foundation_model",))
        bad = [run_record("foundation_model", 1, 1.0, **{"tlp.device_type": "h100", "tlp.device_count": "0"})]
        with pytest.raises(ValueError, match=r"tag tlp\.device_count='0' must be a whole number >= 1"):
            select_stage_runs(bad, cpu_cores=2, stages=("foundation_model",))


class TestServing:
    def test_crossover_formula(self) -> None:
        # fixed 100 $/day over a margin of 0.01 - 0.002 $/request
        assert crossover_daily_requests(100.0, 0.01, 0.002) == pytest.approx(12_500.0)
        assert crossover_daily_requests(100.0, 0.002, 0.002) is None
        assert crossover_daily_requests(100.0, 0.001, 0.002) is None

    def test_defaults(self) -> None:
        serving = serving_costs(10_000, ApiPricing(), SelfHosting(), PriceTable())
        assert ApiPricing().usd_per_request == pytest.approx((400 * 3.0 + 10 * 15.0) / 1e6)
        assert serving.api_usd_per_1k == pytest.approx(1.35)
        assert serving.self_host_replica_hourly_usd == pytest.approx(0.08)  # 2 cores x $0.04
        assert serving.self_host_marginal_usd_per_1k == pytest.approx(0.08 / (370 * 3600 * 0.5) * 1000)
        assert serving.self_host_fixed_daily_usd == pytest.approx(2 * 0.08 * 24 + 5000 / 30)
        expected = (2 * 0.08 * 24 + 5000 / 30) / (0.00135 - 0.08 / (370 * 3600 * 0.5))
        assert serving.crossover_daily_requests == pytest.approx(expected)
        assert serving.crossover_daily_requests == pytest.approx(126_312.47358, abs=1e-4)
        assert serving.cheaper_at_volume == "api"

    def test_at_the_crossover_both_cost_the_same(self) -> None:
        volume = serving_costs(10_000, ApiPricing(), SelfHosting(), PriceTable()).crossover_daily_requests
        assert volume is not None
        at = serving_costs(volume, ApiPricing(), SelfHosting(), PriceTable())
        assert at.api_daily_usd == pytest.approx(at.self_host_daily_usd)
        assert serving_costs(volume * 2, ApiPricing(), SelfHosting(), PriceTable()).cheaper_at_volume == "self_host"


class TestReport:
    def test_setup_and_monthly_costs_add_measured_compute_to_the_stated_assumptions(self) -> None:
        settings = CostSettings(setup_labour_usd=1000.0, retrains_per_month=2.0)
        report = build_cost_report(RUNS, settings)
        measured = (60 / 3600 * 2 + 1.0 + 2.0) * 0.04
        assert report.measured_total_usd == pytest.approx(measured)
        assert report.measured_device_hours == pytest.approx({"cpu": 60 / 3600 * 2 + 3.0})
        assert report.setup_cost_usd == pytest.approx(1000.0 + measured)
        assert report.monthly_running_cost_usd == pytest.approx(report.serving.self_host_daily_usd * 30 + 2 * measured)
        assert any("device of untagged runs: CPU with 2 cores" in a for a in report.assumptions)
        payload = report.to_json()
        assert [s["stage"] for s in payload["stages"]] == ["foundation_model", "domain_adapted_model", "task_model"]
        assert payload["serving"]["cheaper_at_volume"] == "api"
        assert payload["settings"]["compute"]["utilisation"] == 0.4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PriceTable(a100_hour_usd=0.0), r"PriceTable\.a100_hour_usd must be > 0, got 0\.0"),
        (lambda: PriceTable().per_device_hour("tpu"), r"device type 'tpu' has no price; the price table covers"),
        (lambda: ComputeModel(utilisation=1.5), r"ComputeModel\.utilisation must be in \(0, 1\], got 1\.5"),
        (lambda: ComputeModel(parameters=0), r"ComputeModel\.parameters must be > 0, got 0"),
        (lambda: ComputeModel(lora_epochs=-1), r"ComputeModel\.lora_epochs must be > 0, got -1"),
        (lambda: ApiPricing(usd_per_million_input_tokens=-1.0), r"ApiPricing\.usd_per_million_input_tokens must be >= 0"),
        (lambda: ApiPricing(input_tokens_per_request=0, output_tokens_per_request=0), r"must be > 0"),
        (lambda: SelfHosting(min_replicas=0), r"SelfHosting\.min_replicas must be >= 1, got 0"),
        (lambda: SelfHosting(target_utilisation=0.0), r"SelfHosting\.target_utilisation must be in \(0, 1\], got 0\.0"),
        (lambda: SelfHosting(throughput_requests_per_second=0.0), r"SelfHosting\.throughput_requests_per_second must be > 0"),
        (lambda: CostSettings(daily_requests=0.0), r"CostSettings\.daily_requests must be > 0, got 0\.0"),
        (lambda: CostSettings(cpu_cores=0), r"CostSettings\.cpu_cores must be > 0, got 0"),
        (lambda: CostSettings(setup_labour_usd=-1.0), r"CostSettings\.setup_labour_usd must be >= 0, got -1\.0"),
        (lambda: training_flops(7e9, 0), r"training_flops\.tokens must be > 0, got 0"),
        (lambda: serving_costs(-1, ApiPricing(), SelfHosting(), PriceTable()), r"ServingCosts\.daily_requests must be > 0"),
    ],
)
def test_bad_inputs_name_the_field_and_range(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
