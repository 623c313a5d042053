"""The cost report: measured stage compute beside the estimated alternatives and the serving economics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tl_platform.economics.compute import AlternativeCost, ComputeModel, estimate_alternatives, same_data_lora_hours
from tl_platform.economics.costs import (
    INFERRED_CPU,
    MEASURED_STAGES,
    OPTIONAL_STAGES,
    PriceTable,
    StageCost,
    price_stage_runs,
    require_non_negative,
    require_positive,
    select_stage_runs,
)
from tl_platform.economics.serving import DAYS_PER_MONTH, ApiPricing, SelfHosting, ServingCosts, serving_costs

DEFAULT_DAILY_REQUESTS = 10_000.0


@dataclass(frozen=True)
class CostSettings:
    """Everything the report assumes; the measured part comes from the runs.

    Attributes:
        prices: dollars per device-hour.
        compute: the compute model of the alternatives.
        api: the frontier-model API's pricing.
        hosting: self-hosted serving.
        daily_requests: the planned volume.
        cpu_cores: cores of a run that carries no device tag.
        setup_labour_usd: people's cost to take the model to production (engineering, labelling, review);
            a representative figure, not measured. The report's setup cost adds the measured compute to it.
        retrains_per_month: how often the monitoring loop retrains; each retrain repeats the measured stages.
        dagster_run_id: measure the stages of this Dagster run; the newest finished run of each when None.
    """

    prices: PriceTable = field(default_factory=PriceTable)
    compute: ComputeModel = field(default_factory=ComputeModel)
    api: ApiPricing = field(default_factory=ApiPricing)
    hosting: SelfHosting = field(default_factory=SelfHosting)
    daily_requests: float = DEFAULT_DAILY_REQUESTS
    cpu_cores: int = 2
    setup_labour_usd: float = 80_000.0
    retrains_per_month: float = 1.0
    dagster_run_id: str | None = None

    def __post_init__(self) -> None:
        require_positive("CostSettings", "daily_requests", self.daily_requests)
        require_positive("CostSettings", "cpu_cores", self.cpu_cores)
        require_non_negative("CostSettings", "setup_labour_usd", self.setup_labour_usd)
        require_non_negative("CostSettings", "retrains_per_month", self.retrains_per_month)


@dataclass(frozen=True)
class CostReport:
    stages: tuple[StageCost, ...]
    alternatives: tuple[AlternativeCost, ...]
    same_data_lora_device_hours: float
    serving: ServingCosts
    settings: CostSettings
    assumptions: tuple[str, ...]

    @property
    def measured_total_usd(self) -> float:
        return sum(stage.cost_usd for stage in self.stages)

    @property
    def measured_device_hours(self) -> dict[str, float]:
        hours: dict[str, float] = {}
        for stage in self.stages:
            hours[stage.run.device_type] = hours.get(stage.run.device_type, 0.0) + stage.device_hours
        return hours

    @property
    def setup_cost_usd(self) -> float:
        """One-off: the measured training compute plus the people to take it to production."""
        return self.measured_total_usd + self.settings.setup_labour_usd

    @property
    def monthly_running_cost_usd(self) -> float:
        """Self-hosted serving at the planned volume for a month, plus the retrains of the monitoring loop."""
        return self.serving.self_host_daily_usd * DAYS_PER_MONTH + self.measured_total_usd * self.settings.retrains_per_month

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "stages": [stage.to_json() for stage in self.stages],
            "measured_total_usd": self.measured_total_usd,
            "measured_device_hours": self.measured_device_hours,
            "alternatives": [alternative.to_json() for alternative in self.alternatives],
            "same_data_lora_device_hours": self.same_data_lora_device_hours,
            "serving": self.serving.to_json(),
            "setup_cost_usd": self.setup_cost_usd,
            "monthly_running_cost_usd": self.monthly_running_cost_usd,
            "settings": {
                "prices": s.prices.to_json(),
                "compute": s.compute.to_json(),
                "api": s.api.to_json(),
                "hosting": s.hosting.to_json(),
                "daily_requests": s.daily_requests,
                "cpu_cores": s.cpu_cores,
                "setup_labour_usd": s.setup_labour_usd,
                "retrains_per_month": s.retrains_per_month,
                "dagster_run_id": s.dagster_run_id,
            },
            "assumptions": list(self.assumptions),
        }


def build_cost_report(
    runs: Sequence[Mapping[str, Any]],
    settings: CostSettings,
    stages: Sequence[str] = MEASURED_STAGES,
    optional: Sequence[str] = OPTIONAL_STAGES,
) -> CostReport:
    """Price the newest finished run of each stage, estimate the alternatives, and cost the two ways of serving."""
    stage_costs = price_stage_runs(
        select_stage_runs(runs, settings.cpu_cores, stages, settings.dagster_run_id, optional), settings.prices
    )
    compute = settings.compute
    p = settings.prices
    assumptions = [
        (f"prices per device-hour: CPU core ${p.cpu_core_hour_usd}, A100 ${p.a100_hour_usd}, H100 ${p.h100_hour_usd} "
        "(on-demand list prices, not quotes)"),
        (f"alternatives: {compute.parameters:.3g} parameters on {compute.device} at {compute.utilisation:.0%} of "
        f"{compute.peak_flops_per_device:.3g} FLOP/s; FLOPs = 6 x N x tokens (4 x N x tokens for LoRA's frozen base)"),
        (f"tokens: from scratch {compute.pretraining_tokens:.3g}, continued pretraining "
        f"{compute.continued_pretraining_tokens:.3g}, full fine-tune {compute.fine_tune_tokens:.3g} x "
        f"{compute.fine_tune_epochs:g} epochs, LoRA {compute.lora_tokens:.3g} x {compute.lora_epochs:g} epochs"),
        (f"API: {settings.api.input_tokens_per_request:g} input and {settings.api.output_tokens_per_request:g} output "
        f"tokens a request at ${settings.api.usd_per_million_input_tokens}/"
        f"${settings.api.usd_per_million_output_tokens} per million"),
        (f"self-hosting: {settings.hosting.throughput_requests_per_second:g} requests/s a replica "
        f"({settings.hosting.throughput_source}), {settings.hosting.min_replicas} replicas of "
        f"{settings.hosting.devices_per_replica} {settings.hosting.device} devices always on, "
        f"{settings.hosting.target_utilisation:.0%} target utilisation, "
        f"${settings.hosting.operations_monthly_usd:,.0f} a month of operations"),
        (f"setup labour ${settings.setup_labour_usd:,.0f} (representative, not measured); "
        f"{settings.retrains_per_month:g} retrain(s) a month"),
    ]
    if any(stage.run.device_source == INFERRED_CPU for stage in stage_costs):
        assumptions.append(f"device of untagged runs: CPU with {settings.cpu_cores} cores ({INFERRED_CPU})")
    return CostReport(
        stages=stage_costs,
        alternatives=estimate_alternatives(compute, settings.prices),
        same_data_lora_device_hours=same_data_lora_hours(compute),
        serving=serving_costs(settings.daily_requests, settings.api, settings.hosting, settings.prices),
        settings=settings,
        assumptions=tuple(assumptions),
    )
