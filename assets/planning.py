"""Beside the loop: the transfer plan, the cost report and the ROI curve, from measured numbers."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
from typing import Any

import dagster as dg
from pydantic import Field

from assets.stage_records import content_version, png_markdown
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageOutputError, StageStore, UpstreamOutput, lineage_metadata
from tl_platform.checkpoints import verify_bundle
from tl_platform.data.splits import read_splits
from tl_platform.economics.compute import ComputeModel
from tl_platform.economics.cost_report import DEFAULT_DAILY_REQUESTS, CostSettings, build_cost_report
from tl_platform.economics.costs import PriceTable
from tl_platform.economics.decision import PlanSettings, plan_transfer
from tl_platform.economics.documents import cost_document, plan_document, roi_document
from tl_platform.economics.measurements import (
    DEFAULT_MAX_TEXTS_FOR_LENGTHS,
    bundled_reference_texts,
    encoder_embedder,
)
from tl_platform.economics.plots import plot_cost_comparison, plot_roi_curve
from tl_platform.economics.render import to_markdown
from tl_platform.economics.report import (
    COST_PLOT,
    COST_RECORD,
    PLAN_RECORD,
    ROI_PLOT,
    ROI_RECORD,
    write_record,
)
from tl_platform.economics.roi import roi_from_cost_report
from tl_platform.economics.serving import ASSUMED_THROUGHPUT_SOURCE, ApiPricing, SelfHosting
from tl_platform.models.foundation import load_encoder, load_tokenizer
from tl_platform.tracking.mlflow_tracker import search_runs
from tl_platform.training.long_text import REFERENCE_LATENCY_MS, REFERENCE_TOKENS, count_tokens, model_window


class TransferPlanConfig(dg.Config):
    """The service's constraints and the decision tree's thresholds (``PlanSettings``, validated there)."""

    latency_sla_ms: float = Field(default=500.0, description="p95 latency the service must meet")
    daily_requests: float = Field(default=DEFAULT_DAILY_REQUESTS, description="planned requests a day")
    tasks_sharing_backbone: int = Field(default=1, description="tasks or tenants sharing one backbone")
    api_latency_ms: float = Field(default=1500.0, description="assumed p95 latency of a frontier-model API")
    few_labels_per_class: int = Field(default=100, description="below this in the smallest class, prompting leads")
    full_fine_tune_min_per_class: int = Field(default=5000, description="from this, one task fine-tunes every weight")
    min_unlabelled_texts_for_adaptation: int = Field(default=500, description="texts domain adaptation needs")
    far_threshold: float = Field(default=1.4, description="relative domain distance from which the target is far")
    max_texts_per_domain: int = Field(default=300, description="texts embedded per domain (a seeded sample)")
    seed: int = 0
    embedding_max_length: int = Field(default=64, description="tokens per text for the embeddings")
    length_percentile: float = Field(default=95.0, description="max_length holds this percentile of token lengths whole")
    length_multiple: int = Field(default=16, description="max_length is rounded up to a multiple of this")
    min_max_length: int = Field(default=64, description="the shortest max_length the plan chooses")
    max_texts_for_lengths: int = Field(default=DEFAULT_MAX_TEXTS_FOR_LENGTHS, description="texts whose tokens are counted (a seeded sample)")
    serving_latency_ms: float = Field(
        default=REFERENCE_LATENCY_MS, description="measured serving latency the length's latency model scales from (README bench)"
    )
    serving_latency_tokens: int = Field(default=REFERENCE_TOKENS, description="request length that latency was measured at")

    def to_library(self) -> PlanSettings:
        return PlanSettings(**self.model_dump(exclude={"embedding_max_length"}))


class CostReportConfig(dg.Config):
    """Prices, the compute model of the alternatives and the serving assumptions (validated in the library)."""

    cpu_core_hour_usd: float = 0.04
    a100_hour_usd: float = 2.0
    h100_hour_usd: float = 3.5
    cpu_cores: int = Field(default=2, description="cores of a run without a tlp.device_type tag (CPU assumed)")
    dagster_run_id: str | None = Field(default=None, description="measure this Dagster run; newest runs when unset")
    parameters: float = Field(default=7e9, description="model size of the alternatives")
    pretraining_tokens: float = 2e12
    continued_pretraining_tokens: float = 1e11
    fine_tune_tokens: float = 2e9
    fine_tune_epochs: float = 4.0
    lora_tokens: float = 2e8
    lora_epochs: float = 3.0
    lora_flops_per_parameter_token: float = 4.0
    device: str = Field(default="a100", description="device the alternatives' hours are counted in")
    peak_flops_per_device: float = 312e12
    utilisation: float = Field(default=0.40, description="achieved fraction of peak FLOP/s, (0, 1]")
    api_input_tokens_per_request: float = 400.0
    api_output_tokens_per_request: float = 10.0
    api_usd_per_million_input_tokens: float = 3.0
    api_usd_per_million_output_tokens: float = 15.0
    serving_throughput_requests_per_second: float = Field(
        default=370.0, description="one replica's throughput; an assumption until the serving benchmark feeds it"
    )
    serving_throughput_source: str = Field(
        default=ASSUMED_THROUGHPUT_SOURCE, description="where the throughput figure comes from (shown in the report)"
    )
    serving_device: str = "cpu"
    serving_devices_per_replica: int = 2
    serving_target_utilisation: float = 0.5
    serving_min_replicas: int = 2
    operations_monthly_usd: float = Field(default=5000.0, description="people and tooling self-hosting adds")
    daily_requests: float = DEFAULT_DAILY_REQUESTS
    setup_labour_usd: float = Field(default=80_000.0, description="people's cost to reach production (assumed)")
    retrains_per_month: float = 1.0

    def to_library(self) -> CostSettings:
        hosting = SelfHosting(
            throughput_requests_per_second=self.serving_throughput_requests_per_second,
            throughput_source=self.serving_throughput_source,
            device=self.serving_device,
            devices_per_replica=self.serving_devices_per_replica,
            target_utilisation=self.serving_target_utilisation,
            min_replicas=self.serving_min_replicas,
            operations_monthly_usd=self.operations_monthly_usd,
        )
        return CostSettings(
            prices=PriceTable(self.cpu_core_hour_usd, self.a100_hour_usd, self.h100_hour_usd),
            compute=ComputeModel(
                parameters=self.parameters,
                pretraining_tokens=self.pretraining_tokens,
                continued_pretraining_tokens=self.continued_pretraining_tokens,
                fine_tune_tokens=self.fine_tune_tokens,
                fine_tune_epochs=self.fine_tune_epochs,
                lora_tokens=self.lora_tokens,
                lora_epochs=self.lora_epochs,
                lora_flops_per_parameter_token=self.lora_flops_per_parameter_token,
                device=self.device,
                peak_flops_per_device=self.peak_flops_per_device,
                utilisation=self.utilisation,
            ),
            api=ApiPricing(
                self.api_input_tokens_per_request,
                self.api_output_tokens_per_request,
                self.api_usd_per_million_input_tokens,
                self.api_usd_per_million_output_tokens,
            ),
            hosting=hosting,
            daily_requests=self.daily_requests,
            cpu_cores=self.cpu_cores,
            setup_labour_usd=self.setup_labour_usd,
            retrains_per_month=self.retrains_per_month,
            dagster_run_id=self.dagster_run_id,
        )


class RoiConfig(dg.Config):
    """The value ramp, the owner of the monitoring loop (required), and costs that override the cost report's."""

    monitoring_owner: str = Field(description="who owns the monitoring loop (drift, canary, retrain); required")
    setup_cost_usd: float | None = Field(default=None, description="the cost report's setup cost when unset")
    monthly_cost_usd: float | None = Field(default=None, description="the cost report's monthly cost when unset")
    value_first_month_usd: float = 5000.0
    value_full_usd: float = 50_000.0
    ramp_months: int = 6
    horizon_months: int = 12


@dg.asset(group_name="economics", kinds={"python"}, deps=["labelled_data", "foundation_model"], code_version="3")
def transfer_plan(
    context: dg.AssetExecutionContext, config: TransferPlanConfig, stage_store: StageStore
) -> dg.MaterializeResult:
    """Which transfer recipe to fund, and why: prompting, LoRA, full fine-tuning, domain-adaptive pretraining
    then fine-tuning, or training from scratch, with the runner-up to benchmark against.

    Decided from measured inputs: the labelled examples in total and per class, the unlabelled in-domain texts,
    and how far the target text is from general English (the foundation encoder's embedding distance, relative
    to the spread between the bundled review domains). The latency SLA, daily volume and tasks sharing the
    backbone come from config. Its run config sets whether domain adaptation runs and whether fine-tuning uses
    LoRA: pass it to `tlp run --config`.

    Sequence length: the texts' token lengths with the foundation's tokenizer (percentiles, share cut at 64, 128,
    256 and 512 tokens) choose `max_length` for domain adaptation and fine-tuning (export and serving inherit it
    from the task model): a percentile rounded up, capped by the model's limit and the latency SLA.
    """
    settings = config.to_library()
    upstreams = [stage_store.upstream(context, key) for key in ("labelled_data", "foundation_model")]
    splits = read_splits(upstreams[0].path)
    foundation = verify_bundle(upstreams[1].path / "bundle", expected_stage="foundation")
    tokenizer = load_tokenizer(str(foundation.path / "tokenizer"))
    encoder = load_encoder(str(foundation.path / "model"))
    parameters = sum(p.numel() for p in encoder.parameters())
    source = foundation.provenance.get("config", {}).get("source", str(foundation.path))
    everything = [splits.train, splits.validation, splits.test]
    plan = plan_transfer(
        texts=[text for split in everything for text in split.texts],
        labels=[label for split in everything for label in split.labels],
        class_names=splits.train.schema.names,
        unlabelled_texts=len(splits.train),
        references=bundled_reference_texts(),
        embed=encoder_embedder(encoder, tokenizer, config.embedding_max_length),
        pretrained_model=f"{source} ({encoder.config.model_type}, {parameters:,} parameters)",
        settings=settings,
        count_tokens=lambda texts: count_tokens(tokenizer, texts),
        window=model_window(tokenizer, encoder.config),
    )
    payload = plan.to_json()
    if payload["run_config"] is not None:
        payload["run_config"]["ops"] = {**measured_inputs_config(upstreams[0], source), **payload["run_config"]["ops"]}
    directory = stage_store.output_dir(context)
    write_record(directory, PLAN_RECORD, payload)
    if payload["run_config"] is not None:
        write_record(directory, "run_config.json", payload["run_config"])
    stored = stage_store.save(context, directory)
    domain = payload["inputs"]["domain"]
    return dg.MaterializeResult(
        metadata={
            "plan": dg.MetadataValue.md(to_markdown(plan_document(payload))),
            "recommended": plan.recommended.label,
            "runner_up": plan.runner_up.label,
            "run_config": dg.MetadataValue.json(payload["run_config"] or {}),
            "relative_domain_distance": domain["relative"],
            "labelled_examples": payload["inputs"]["labels"]["total"],
            "smallest_class": payload["inputs"]["labels"]["smallest_class"],
            **length_metadata(payload),
            "inputs": dg.MetadataValue.json(payload["inputs"]),
            **stored,
            **lineage_metadata(*upstreams),
        },
        data_version=content_version(json.dumps(payload, sort_keys=True)),
    )


def length_metadata(payload: dict[str, Any]) -> dict[str, Any]:
    """The chosen max_length and the token-length profile it came from."""
    choice, lengths = payload["max_length"], payload["inputs"]["token_lengths"]
    if choice is None or lengths is None:
        return {}
    return {
        "max_length": choice["max_length"],
        "max_length_bound_by": choice["bound_by"],
        "truncated_share_at_max_length": choice["truncated_share"],
        "token_length_percentiles": dg.MetadataValue.json(lengths["percentiles"]),
        "truncated_share": dg.MetadataValue.json(lengths["truncated_share"]),
    }


def measured_inputs_config(data: UpstreamOutput, foundation_source: str) -> dict[str, Any]:
    """Run config that repeats the data and foundation model the plan measured, so the plan runs on them."""
    recorded = data.materialisation.metadata.get("config")
    if recorded is None:
        raise StageOutputError("labelled_data recorded no config (materialised before plans carried it); re-materialise it")
    return {
        "labelled_data": {"config": {k: v for k, v in dict(recorded.value).items() if v is not None}},
        "foundation_model": {"config": {"source": foundation_source}},
    }


@dg.asset(
    group_name="economics",
    kinds={"python", "mlflow"},
    deps=["foundation_model", "domain_adapted_model", "task_model"],
    code_version="2",
)
def cost_report(
    context: dg.AssetExecutionContext, config: CostReportConfig, stage_store: StageStore, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """What the model cost to make and what the alternatives would cost, so the orders of magnitude are visible.

    Measured: each stage's wall-clock from its MLflow run, its device (CPU when the run carries no device tag)
    and device hours, priced with the configured price table. Estimated from a stated compute model (6 x
    parameters x tokens FLOPs at an achieved utilisation): training from scratch, continued pretraining, full
    fine-tuning and LoRA at the configured model size. Serving: prompting an API against self-hosting per 1,000
    requests and the daily volume where they cross. Its setup and monthly figures are the ROI curve's defaults.
    """
    report = build_cost_report(search_runs(mlflow.settings()), config.to_library())
    payload = report.to_json()
    directory = stage_store.output_dir(context)
    write_record(directory, COST_RECORD, payload)
    picture = plot_cost_comparison(report, directory / COST_PLOT)
    stored = stage_store.save(context, directory)
    by_recipe = {a.recipe: a for a in report.alternatives}
    return dg.MaterializeResult(
        metadata={
            "cost_report": dg.MetadataValue.md(to_markdown(cost_document(payload))),
            "cost_comparison": png_markdown(picture, "cost comparison"),
            "measured_total_usd": report.measured_total_usd,
            "measured_device_hours": dg.MetadataValue.json(report.measured_device_hours),
            "stage_runs": dg.MetadataValue.json({s.run.stage: s.run.run_id for s in report.stages}),
            **{f"{name}_device_hours": alternative.device_hours for name, alternative in by_recipe.items()},
            "api_usd_per_1k_requests": report.serving.api_usd_per_1k,
            "self_host_usd_per_1k_requests_at_volume": report.serving.self_host_usd_per_1k_at_volume,
            "crossover_daily_requests": report.serving.crossover_daily_requests,
            "setup_cost_usd": report.setup_cost_usd,
            "monthly_running_cost_usd": report.monthly_running_cost_usd,
            **stored,
        },
        data_version=content_version(json.dumps(payload, sort_keys=True)),
    )


@dg.asset(group_name="economics", kinds={"python"}, deps=["cost_report"], code_version="2")
def roi_curve(context: dg.AssetExecutionContext, config: RoiConfig, stage_store: StageStore) -> dg.MaterializeResult:
    """Whether the model pays for itself within a year: breakeven month and year-1 ROI, with value halved beside.

    Setup and monthly costs default to the cost report's (measured compute plus the stated labour and
    operations); the value ramp is config. The monitoring loop's owner is required: an unowned loop lets the
    model, and the value, erode before breakeven.
    """
    costs = stage_store.upstream(context, "cost_report")
    cost_record = json.loads((costs.path / COST_RECORD).read_text())
    result = roi_from_cost_report(cost_record, **config.model_dump())
    inputs = result.inputs
    payload = result.to_json()
    directory = stage_store.output_dir(context)
    write_record(directory, ROI_RECORD, payload)
    picture = plot_roi_curve(result, directory / ROI_PLOT)
    stored = stage_store.save(context, directory)
    return dg.MaterializeResult(
        metadata={
            "roi": dg.MetadataValue.md(to_markdown(roi_document(payload))),
            "roi_curve": png_markdown(picture, "ROI curve"),
            "breakeven_month": result.base.breakeven_month,
            "year_one_roi": result.base.year_one_roi,
            "breakeven_month_value_halved": result.value_halved.breakeven_month,
            "year_one_roi_value_halved": result.value_halved.year_one_roi,
            "monitoring_owner": inputs.monitoring_owner,
            "setup_cost_usd": inputs.setup_cost_usd,
            "monthly_cost_usd": inputs.monthly_cost_usd,
            "cost_source": result.cost_source,
            **stored,
            **lineage_metadata(costs),
        },
        data_version=content_version(json.dumps(payload, sort_keys=True)),
    )


PLANNING_ASSETS = [transfer_plan, cost_report, roi_curve]
