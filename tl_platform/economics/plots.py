"""Pictures of the cost report and the ROI curve, written as PNG for the Dagster UI and the proposal report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_platform.economics.cost_report import CostReport
from tl_platform.economics.roi import RoiResult
from tl_platform.plotting import pyplot, save_figure


def _dollars(value: float) -> str:
    if value >= 1000:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.2g}"


def plot_cost_comparison(report: CostReport, path: Path) -> Path:
    """Left: dollars on a log scale, measured stages beside the estimated alternatives and serving per 1,000
    requests. Right: daily cost against daily requests for the API and self-hosting, with the crossover."""
    plt = pyplot()
    compute = report.settings.compute
    rows: list[tuple[str, float, str]] = [
        (f"{a.label} ({compute.parameters / 1e9:.3g}B, est.)", a.cost_usd, "tab:blue") for a in report.alternatives
    ]
    rows.extend((f"measured: {s.run.stage} ({s.run.device_type})", s.cost_usd, "tab:green") for s in report.stages)
    rows.append(("prompting API, per 1,000 requests", report.serving.api_usd_per_1k, "tab:orange"))
    rows.append(
        ("self-hosted, per 1,000 requests at volume", report.serving.self_host_usd_per_1k_at_volume, "tab:purple")
    )
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110, gridspec_kw={"width_ratios": [1.35, 1]})
    positive = [(label, max(value, 1e-9), color) for label, value, color in rows]
    y = np.arange(len(positive))[::-1]
    left.barh(y, [v for _, v, _ in positive], color=[c for _, _, c in positive])
    left.set_yticks(y, [label for label, _, _ in positive], fontsize=8)
    left.set_xscale("log")
    for yi, (_, value, _) in zip(y, positive, strict=True):
        left.text(value * 1.15, yi, _dollars(value), va="center", fontsize=7)
    left.set_xlabel("US dollars (log scale)")
    left.set_title("Training and serving cost: orders of magnitude", fontsize=10)
    left.set_xlim(min(v for _, v, _ in positive) / 3, max(v for _, v, _ in positive) * 20)

    serving = report.serving
    crossover = serving.crossover_daily_requests
    top = max(serving.daily_requests, crossover or 0.0) * 10
    volumes = np.logspace(2, np.log10(top), 200)
    api = volumes * serving.api_usd_per_1k / 1000
    hosted = serving.self_host_fixed_daily_usd + volumes * serving.self_host_marginal_usd_per_1k / 1000
    right.plot(volumes, api, label="prompting API", color="tab:orange")
    right.plot(volumes, hosted, label="self-hosted", color="tab:purple")
    if crossover is not None:
        right.axvline(crossover, color="grey", linestyle="--", linewidth=1)
        right.text(crossover * 1.1, float(api.min()) * 2, f"crossover\n{crossover:,.0f}/day", fontsize=8)
    right.axvline(serving.daily_requests, color="black", linestyle=":", linewidth=1)
    right.text(serving.daily_requests * 1.1, float(hosted.max()) / 3, f"planned\n{serving.daily_requests:,.0f}/day",
               fontsize=8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("requests a day (log scale)")
    right.set_ylabel("dollars a day (log scale)")
    right.set_title("API against self-hosting", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def plot_roi_curve(result: RoiResult, path: Path) -> Path:
    """Cumulative net value by month, with the value-halved sensitivity line and the breakeven months."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=110)
    months = np.arange(0, result.inputs.horizon_months + 1)
    for curve, label, color in ((result.base, "base case", "tab:blue"), (result.value_halved, "value halved", "tab:red")):
        values = np.concatenate([[-result.inputs.setup_cost_usd], curve.cumulative_net]) / 1000
        ax.plot(months, values, marker="o", markersize=3, color=color,
                label=f"{label}: breakeven month {curve.breakeven_month or 'not reached'}, "
                      f"year-1 ROI {curve.year_one_roi:.0%}")
        if curve.breakeven_month is not None:
            ax.axvline(curve.breakeven_month, color=color, linestyle=":", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(months)
    ax.set_xlabel("month")
    ax.set_ylabel("cumulative net value (thousand $)")
    ax.set_title(f"{result.inputs.horizon_months}-month ROI (monitoring loop owner: {result.inputs.monitoring_owner})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path
