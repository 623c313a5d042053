"""Pictures of monitoring over time: each feature's drift score against its threshold, canary accuracy against the SLO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tl_platform.plotting import pyplot, save_figure


@dataclass(frozen=True)
class CanaryPoint:
    """One window's canary: accuracy and its interval, or None where too few labels arrived."""

    day: str
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    n_labelled: int


def plot_drift_history(
    scores: Mapping[str, Mapping[str, float]], thresholds: Mapping[str, float], path: Path, title: str
) -> Path:
    """``scores[day][feature]``: one line per feature over the days, each divided by its own threshold.

    Dividing by the threshold puts every feature on one axis whose line at 1.0 is the alarm level, whatever
    the test behind the score (KL, PSI or Jensen-Shannon).
    """
    plt = pyplot()
    days = sorted(scores)
    features = sorted({feature for day in days for feature in scores[day]})
    fig, ax = plt.subplots(figsize=(8.0, 3.6), dpi=110)
    for feature in features:
        limit = thresholds.get(feature)
        if not limit:
            continue
        values = [scores[day].get(feature, float("nan")) / limit for day in days]
        ax.plot(days, values, marker="o", markersize=3, linewidth=1.2, label=feature)
    ax.axhline(1.0, color="crimson", linestyle="--", linewidth=1.0, label="threshold")
    ax.set_ylabel("score / threshold")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=6, ncol=2, loc="upper left", frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_canary_history(points: Sequence[CanaryPoint], slo: float, path: Path, title: str) -> Path:
    """Accuracy per window with its confidence interval, against the SLO; windows without enough labels are marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.4), dpi=110)
    scored = [p for p in points if p.accuracy is not None and p.ci_low is not None and p.ci_high is not None]
    if scored:
        ax.errorbar(
            [p.day for p in scored],
            [p.accuracy for p in scored],
            yerr=[[p.accuracy - p.ci_low for p in scored], [p.ci_high - p.accuracy for p in scored]],  # type: ignore[operator]
            fmt="o", color="tab:blue", ecolor="tab:blue", capsize=3, markersize=4, label="accuracy (95% CI)",
        )
    unscored = [p for p in points if p.accuracy is None]
    if unscored:
        ax.scatter([p.day for p in unscored], [slo] * len(unscored), marker="x", color="grey", label="too few labels")
    ax.axhline(slo, color="crimson", linestyle="--", linewidth=1.0, label=f"SLO {slo:.2f}")
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7, loc="lower left", frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)

