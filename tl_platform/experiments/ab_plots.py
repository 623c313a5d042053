"""Pictures of an A/B experiment: each day's effect with its 95% band, and the cumulative sample against the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tl_platform.experiments.ab_decision import ExperimentDecision
from tl_platform.plotting import pyplot, save_figure


def plot_daily_effects(decision: ExperimentDecision, path: Path) -> Path:
    """Per day: that day's own difference (challenger - champion) with its confidence interval, and the
    cumulative always-valid confidence sequence around it; the line at 0 is no effect."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.6), dpi=110)
    shown = [d for d in decision.daily if d.result.ok and d.result.difference is not None]
    if shown:
        days = [d.day.isoformat() for d in shown]
        diffs = [float(d.result.difference) for d in shown]  # type: ignore[arg-type]
        lows = [diff - float(d.result.ci_low) for diff, d in zip(diffs, shown, strict=True)]  # type: ignore[arg-type]
        highs = [float(d.result.ci_high) - diff for diff, d in zip(diffs, shown, strict=True)]  # type: ignore[arg-type]
        ax.errorbar(days, diffs, yerr=[lows, highs], fmt="o", capsize=3, markersize=4, color="tab:blue",
                    label="that day's difference (95% CI)")
    looks = [look for look in decision.sequential if look.cs_low is not None and look.cs_high is not None]
    if looks:
        ax.fill_between([look.day.isoformat() for look in looks], [look.cs_low for look in looks],
                        [look.cs_high for look in looks], color="tab:orange", alpha=0.2,
                        label="cumulative confidence sequence (always valid)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("challenger - champion")
    title = f"{decision.experiment_id}: {decision.verdict} on {decision.day.isoformat()}"
    return _finish(fig, ax, title, "best", path)


def plot_sample_progress(decision: ExperimentDecision, path: Path) -> Path:
    """Cumulative units with feedback per arm by day, against the units the power calculation requires."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.0), dpi=110)
    days = [look.day.isoformat() for look in decision.sequential]
    for arm, color in (("champion", "tab:blue"), ("challenger", "tab:green")):
        counts = [look.n_champion if arm == "champion" else look.n_challenger for look in decision.sequential]
        ax.plot(days, counts, marker="o", markersize=3, color=color, label=f"{arm} units")
        ax.axhline(decision.required_units[arm], color=color, linestyle="--", linewidth=1.0,
                   label=f"{arm} planned {decision.required_units[arm]:,}")
    ax.set_ylabel("units with feedback")
    return _finish(fig, ax, f"{decision.experiment_id}: cumulative sample against the plan", "upper left", path)


def _finish(fig: Any, ax: Any, title: str, legend_at: str, path: Path) -> Path:
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7, loc=legend_at, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
