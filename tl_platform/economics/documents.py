"""The plan, the cost report and the ROI curve as documents, built from their JSON records.

Built from the records (``to_json`` of the results, as written beside each asset's output) so that the Dagster
UI, made at materialisation, and ``tlp report``, made later from the files, show the same thing.
"""

from __future__ import annotations

import json
from typing import Any

from tl_platform.economics.render import Block, Bullets, Code, Heading, Paragraph, Table


def _usd(value: float) -> str:
    sign, size = ("-" if value < 0 else ""), abs(value)
    if size >= 100:
        return f"{sign}${size:,.0f}"
    if size >= 0.01:
        return f"{sign}${size:,.2f}"
    return f"{sign}${size:.3g}"


def _size(parameters: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if parameters >= scale:
            return f"{parameters / scale:.3g}{suffix}"
    return f"{parameters:,.0f}"


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plan_document(plan: dict[str, Any]) -> list[Block]:
    inputs = plan["inputs"]
    labels = inputs["labels"]
    per_class = ", ".join(f"{name} {count:,}" for name, count in labels["per_class"].items())
    domain = inputs["domain"]
    if domain is None:
        distance = "not measured: " + (
            "no pretrained encoder to embed with" if inputs["pretrained_model"] is None else "too few texts"
        )
    else:
        verdict = "far" if domain["far"] else "close"
        excluded = f"; excluded as overlapping the target: {', '.join(domain['excluded_domains'])}" if domain[
            "excluded_domains"] else ""
        distance = (
            f"{domain['relative']:.2f} relative ({domain['distance']:.3f} / calibration {domain['calibration']:.3f}) "
            f"against {', '.join(domain['reference_domains'])}{excluded}; threshold {domain['threshold']:g}: {verdict}"
        )
    crossover = inputs["crossover_daily_requests"]
    rows = (
        ("pretrained model", inputs["pretrained_model"] or "none for this modality"),
        ("labelled examples", f"{labels['total']:,} ({per_class})"),
        ("unlabelled in-domain texts", f"{inputs['unlabelled_texts']:,}"),
        ("domain distance (centroid cosine)", distance),
        ("tasks sharing the backbone", str(inputs["tasks_sharing_backbone"])),
        ("latency SLA / API p95", f"{inputs['latency_sla_ms']:g} ms / {inputs['api_latency_ms']:g} ms"),
        ("daily requests / crossover",
         f"{inputs['daily_requests']:,.0f} / {'none' if crossover is None else f'{crossover:,.0f}'}"),
        *_length_rows(inputs.get("token_lengths"), inputs.get("model_window")),
    )
    blocks: list[Block] = [
        Heading(f"Recommended: {plan['recommended']['label']}"),
        Paragraph(f"Runner-up to benchmark against: {plan['runner_up']['label']}."),
        Heading("Why", 4),
        Bullets(tuple(plan["reasons"])),
        Heading("Measured inputs", 4),
        Table(("input", "value"), rows),
    ]
    if plan.get("max_length") is not None:
        blocks.extend([Heading("Sequence length", 4), Paragraph(plan["max_length"]["explanation"])])
    blocks.append(Heading("Run config of the main job", 4))
    if plan["run_config"] is None:
        blocks.append(Paragraph("None: the main job fine-tunes; neither recipe of this plan is a fine-tuning recipe."))
    else:
        configured = plan["run_config_recipe"]
        role = "" if configured == plan["recommended"] else (
            f", the runner-up, as the benchmark for {plan['recommended']['label']}"
        )
        blocks.append(Paragraph(f"Runs {configured['label']}{role}; save it and pass it to tlp run --config."))
        blocks.append(Code(json.dumps(plan["run_config"], indent=2), "json"))
    blocks.extend([Heading("Assumptions", 4), Bullets(tuple(plan["assumptions"]))])
    return blocks


def _length_rows(lengths: dict[str, Any] | None, window: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    if lengths is None:
        return ()
    percentiles = ", ".join(f"{name} {tokens}" for name, tokens in lengths["percentiles"].items())
    cut = ", ".join(f"{tokens}: {share:.1%}" for tokens, share in lengths["truncated_share"].items())
    limit = "none stated" if window is None or window["limit"] is None else f"{window['limit']} tokens"
    return (
        ("token lengths (foundation tokenizer)",
         f"{percentiles}; longest {lengths['longest']:,} ({lengths['measured_texts']:,} of {lengths['texts']:,} texts)"),
        ("share of texts cut at", cut),
        ("model's limit", limit),
    )


def cost_document(report: dict[str, Any]) -> list[Block]:
    stages = tuple(
        (
            s["stage"] + (" (skipped)" if s["skipped"] else ""),
            s["run_id"][:12],
            f"{s['wall_clock_seconds']:,.1f}",
            f"{s['device_type']} x {s['device_count']}",
            f"{s['device_hours']:.4f}",
            _usd(s["cost_usd"]),
        )
        for s in report["stages"]
    )
    device = report["settings"]["compute"]["device"]
    alternatives = tuple(
        (a["label"], f"{a['tokens']:.3g}", f"{a['flops']:.3g}", _hours(a["device_hours"]), _usd(a["cost_usd"]))
        for a in report["alternatives"]
    )
    serving = report["serving"]
    crossover = serving["crossover_daily_requests"]
    serving_rows = (
        ("prompting API, per 1,000 requests", _usd(serving["api_usd_per_1k"])),
        ("self-hosted, marginal per 1,000 requests", _usd(serving["self_host_marginal_usd_per_1k"])),
        ("self-hosted, fixed per day", _usd(serving["self_host_fixed_daily_usd"])),
        (f"self-hosted, per 1,000 at {serving['daily_requests']:,.0f} a day", _usd(serving["self_host_usd_per_1k_at_volume"])),
        ("API a day / self-hosted a day", f"{_usd(serving['api_daily_usd'])} / {_usd(serving['self_host_daily_usd'])}"),
        ("crossover (requests a day)", "none: the API is never dearer" if crossover is None else f"{crossover:,.0f}"),
        ("throughput of a replica", f"{serving['throughput_requests_per_second']:g} requests/s ({serving['throughput_source']})"),
    )
    compute = report["settings"]["compute"]
    return [
        Heading("Measured compute of each stage"),
        Table(("stage", "MLflow run", "wall-clock s", "device", "device-hours", "cost"), stages),
        Paragraph(f"Measured total: {_usd(report['measured_total_usd'])}."),
        Heading(f"Alternatives at {_size(compute['parameters'])} parameters (estimated)", 3),
        Table(("recipe", "tokens", "FLOPs", f"{device} hours", "cost"), alternatives),
        Paragraph(
            f"LoRA on the full fine-tune's data would take {_hours(report['same_data_lora_device_hours'])} "
            f"{device} hours: the frozen base saves a third of the FLOPs; the rest of the gap above is less data."
        ),
        Heading("Serving", 3),
        Table(("", "value"), serving_rows),
        Heading("For the ROI", 3),
        Table(
            ("", "value"),
            (
                ("setup cost (measured compute + setup labour)", _usd(report["setup_cost_usd"])),
                ("monthly running cost (self-hosted at volume + retrains)", _usd(report["monthly_running_cost_usd"])),
            ),
        ),
        Heading("Assumptions", 4),
        Bullets(tuple(report["assumptions"])),
    ]


def roi_document(roi: dict[str, Any]) -> list[Block]:
    inputs = roi["inputs"]
    base, halved = roi["base"], roi["value_halved"]

    def breakeven(curve: dict[str, Any]) -> str:
        month = curve["breakeven_month"]
        return f"month {month}" if month is not None else f"not within {inputs['horizon_months']} months"

    months = tuple(
        (str(m), _usd(value), _usd(cost), _usd(net), _usd(net_halved))
        for m, value, cost, net, net_halved in zip(
            range(1, inputs["horizon_months"] + 1), base["monthly_value"], base["monthly_cost"],
            base["cumulative_net"], halved["cumulative_net"], strict=True,
        )
    )
    return [
        Heading(f"Breakeven {breakeven(base)}, year-1 ROI {base['year_one_roi']:.1%}"),
        Paragraph(
            f"With the value halved: breakeven {breakeven(halved)}, year-1 ROI {halved['year_one_roi']:.1%}. "
            f"Monitoring loop owner: {inputs['monitoring_owner']}."
        ),
        Table(
            ("month", "value", "running cost", "cumulative net", "cumulative net, value halved"),
            (("0", "", _usd(inputs["setup_cost_usd"]), _usd(-inputs["setup_cost_usd"]), _usd(-inputs["setup_cost_usd"])),
             *months),
        ),
        Heading("Assumptions", 4),
        Bullets(
            (
                (f"setup {_usd(inputs['setup_cost_usd'])} and {_usd(inputs['monthly_cost_usd'])} a month "
                f"({roi['cost_source']})"),
                (f"value from {_usd(inputs['value_first_month_usd'])} in month 1 to {_usd(inputs['value_full_usd'])} "
                f"a month by month {inputs['ramp_months']}, linear, then flat"),
                "the setup cost is paid before month 1; breakeven is the first month whose cumulative net is >= 0",
                (f"the value assumes the monitoring loop is owned ({inputs['monitoring_owner']}): an unowned loop "
                "erodes accuracy, and the value, before breakeven"),
            )
        ),
    ]


def _bytes(size: float) -> str:
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= scale:
            return f"{size / scale:.3g} {suffix}"
    return f"{size:,.0f} B"


def comparison_document(comparison: dict[str, Any]) -> list[Block]:
    """Two candidates side by side (``PlanComparison.to_json``), with McNemar's test and the verdict."""
    candidates = comparison["candidates"]
    metrics = [c["metrics"] for c in candidates]
    rows = (
        ("test accuracy", "{:.4f}", "test_accuracy"),
        ("test macro-F1", "{:.4f}", "test_macro_f1"),
        ("calibration: ECE (lower is better)", "{:.4f}", "test_ece"),
        ("training seconds", "{:.1f}", "train_seconds"),
        ("of which domain adaptation", "{:.1f}", "domain_adaptation_seconds"),
        ("epochs run", "{:.0f}", "epochs_run"),
        ("trained parameters", "{:,.0f}", "trainable_parameters"),
        ("latency, one request: median ms", "{:.2f}", "latency_p50_ms"),
        ("latency, one request: p95 ms", "{:.2f}", "latency_p95_ms"),
    )
    table = [(label, *(form.format(m[key]) for m in metrics)) for label, form, key in rows]
    table += [("model size (merged weights)", *(_bytes(m["model_bytes"]) for m in metrics)),
              ("adapter size (what a task adds)", *(_bytes(m["adapter_bytes"]) for m in metrics))]
    test, budget = comparison["mcnemar"], comparison["budget"]
    return [
        Heading("Plan comparison: the recommended recipe against the runner-up"),
        Paragraph(comparison["verdict"]),
        Table(("", *(f"{c['recipe']['label']} ({c['role']})" for c in candidates)), tuple(table)),
        Bullets((
            (f"McNemar ({'exact binomial' if test['exact'] else 'chi-squared, continuity-corrected'}) on "
             f"{candidates[0]['test_examples']} test texts: b = {test['b']} (only the {candidates[0]['role']} right), "
             f"c = {test['c']} (only the {candidates[1]['role']} right), p = {test['p_value']:.4g}"),
            (f"same budget for both: up to {budget['epochs']} epoch(s) with early stopping, max_length "
             f"{budget['max_length']}, batch {budget['batch_size']}, seed {budget['seed']}; the same train, "
             "validation and test splits"),
            (f"latency: {budget['latency_requests']} single-text predictions (tokenise and forward) of the merged "
             "PyTorch model on CPU, the same texts for both; serving runs the exported ONNX model, faster"),
            "adapter size: the saved LoRA adapter (and classifier head); for full fine-tuning, the whole model",
            *((DOMAIN_ADAPTED_ADAPTER,) if any(c["recipe"]["domain_adaptation"] for c in candidates) else ()),
        )),
    ]


DOMAIN_ADAPTED_ADAPTER = ("after domain adaptation a LoRA adapter needs the adapted backbone, not the shared foundation: "
                          "count the model size once per adapted domain")
