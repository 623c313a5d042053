"""The story's pictures: drift per feature over time, canary accuracy against the SLO, the A/B effect, volume.

Each takes the day records (``records.day_record``) and returns PNG bytes; the phases of the world are shaded
the same way in every picture so they read as one timeline.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from tl_platform.plotting import pyplot

PHASE_COLOURS = {"steady": "#ffffff", "benign": "#eef5ff", "harmful": "#fff0ea"}
Days = Sequence[Mapping[str, Any]]


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    return buffer.getvalue()


def _shade_phases(ax: Any, days: Days) -> None:
    for i, day in enumerate(days):
        ax.axvspan(i - 0.5, i + 0.5, color=PHASE_COLOURS.get(day["phase"], "#ffffff"), zorder=0, lw=0)
    starts = [i for i in range(1, len(days)) if days[i]["phase"] != days[i - 1]["phase"]]
    for i in starts:
        ax.axvline(i - 0.5, color="#999", lw=0.8, ls=":")
        ax.text(i - 0.4, 1.0, days[i]["phase"] + " shift", transform=ax.get_xaxis_transform(), va="top",
                fontsize=8, color="#555")


def _mark_events(ax: Any, days: Days) -> None:
    for i, day in enumerate(days):
        if day.get("retrain_window"):
            ax.axvline(i, color="#c0392b", lw=1.2)
            ax.text(i + 0.1, 0.02, f"retrain -> v{day['candidate_version']}", transform=ax.get_xaxis_transform(),
                    fontsize=8, color="#c0392b", rotation=90, va="bottom")
        ab = day.get("ab")
        if ab and ab.get("verdict") in ("ship", "roll_back", "invalid"):
            ax.axvline(i, color="#27ae60", lw=1.2)
            ax.text(i + 0.1, 0.02, ab["verdict"].replace("_", " "), transform=ax.get_xaxis_transform(),
                    fontsize=8, color="#27ae60", rotation=90, va="bottom")


def _day_axis(ax: Any, days: Days) -> None:
    step = max(1, len(days) // 12)
    ticks = list(range(0, len(days), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{days[i]['day'][5:]}\n{days[i]['weekday']}" for i in ticks], fontsize=8)
    ax.set_xlim(-0.5, len(days) - 0.5)


def drift_heatmap(days: Days) -> bytes:
    """Each feature's deciding score over its threshold, per day: 1 and above is drift (outlined)."""
    plt = pyplot()
    features = sorted({name for day in days for name in day.get("drift_scores", {})})
    fig, ax = plt.subplots(figsize=(11, 0.32 * max(len(features), 4) + 1.6))
    if not features:
        ax.text(0.5, 0.5, "no drift results", ha="center", transform=ax.transAxes)
        return _png(fig)
    grid = [[_ratio(day, name) for day in days] for name in features]
    image = ax.imshow([[min(v, 3.0) if v is not None else float("nan") for v in row] for row in grid],
                      aspect="auto", cmap="YlOrRd", vmin=0, vmax=3, interpolation="nearest")
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            if value is not None and value >= 1.0:
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="#222", lw=0.8))
    ax.set_yticks(range(len(features)))
    ax.set_yticklabels(features, fontsize=8)
    _day_axis(ax, days)
    colour_bar = fig.colorbar(image, ax=ax, fraction=0.025)
    colour_bar.set_label("score / threshold (capped at 3)", fontsize=8)
    ax.set_title("Drift per feature, day by day (outlined: drifted)")
    return _png(fig)


def _ratio(day: Mapping[str, Any], feature: str) -> float | None:
    score, threshold = day.get("drift_scores", {}).get(feature), day.get("drift_thresholds", {}).get(feature)
    if score is None or not threshold:
        return None
    return float(score) / float(threshold)


def canary_chart(days: Days, slo: float | None) -> bytes:
    """The labelled canary's accuracy with its 95% interval per day, against the SLO."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.6))
    _shade_phases(ax, days)
    xs = [i for i, d in enumerate(days) if d.get("canary_accuracy") is not None]
    ys = [days[i]["canary_accuracy"] for i in xs]
    low = [days[i]["canary_accuracy"] - days[i]["ci_low"] for i in xs]
    high = [days[i]["ci_high"] - days[i]["canary_accuracy"] for i in xs]
    colours = ["#c0392b" if days[i]["canary_status"] == "breach" else "#2c3e50" for i in xs]
    ax.errorbar(xs, ys, yerr=[low, high], fmt="none", ecolor="#7f8c8d", capsize=2, zorder=2)
    ax.scatter(xs, ys, c=colours, zorder=3, s=18)
    if slo is not None:
        ax.axhline(slo, color="#c0392b", ls="--", lw=1, label=f"SLO {slo:.2f}")
        ax.legend(loc="lower left", fontsize=8)
    _mark_events(ax, days)
    _day_axis(ax, days)
    ax.set_ylabel("champion accuracy on feedback")
    ax.set_title("Labelled canary against the SLO (95% Wilson intervals; red: breach)")
    return _png(fig)


def ab_effect_chart(days: Days) -> bytes:
    """The experiment's estimated effect (challenger minus champion) after each decision day, with its 95% CI."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    looks = [(d["day"][5:], d["ab"]) for d in days if d.get("ab") and d["ab"].get("difference") is not None]
    if not looks:
        ax.text(0.5, 0.5, "no A/B decision day with an estimate", ha="center", transform=ax.transAxes)
        return _png(fig)
    xs = list(range(len(looks)))
    diff = [ab["difference"] for _, ab in looks]
    ax.fill_between(xs, [ab["ci_low"] for _, ab in looks], [ab["ci_high"] for _, ab in looks], color="#aed6f1",
                    alpha=0.7, label="95% confidence band")
    ax.plot(xs, diff, marker="o", color="#1f618d", label="challenger - champion")
    ax.axhline(0.0, color="#555", lw=0.8)
    for x, (_, ab) in zip(xs, looks, strict=True):
        ax.annotate(ab["verdict"].replace("_", " "), (x, ab["difference"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)
    ax.set_xticks(xs)
    ax.set_xticklabels([day for day, _ in looks], fontsize=8)
    ax.set_ylabel("per-user accuracy difference")
    ax.set_title("A/B: the primary metric's estimated effect after each day")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def volume_chart(days: Days) -> bytes:
    """Requests per day (the weekly cycle) and the share answered correctly."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 2.8))
    _shade_phases(ax, days)
    ax.bar(range(len(days)), [d["requests"] for d in days], color="#95a5a6", zorder=2)
    ax.set_ylabel("requests")
    other = ax.twinx()
    other.plot(range(len(days)), [d["served_accuracy"] for d in days], color="#1f618d", marker=".", zorder=3)
    other.set_ylabel("answered correctly", color="#1f618d")
    _mark_events(ax, days)
    _day_axis(ax, days)
    ax.set_title("Traffic per simulated day, and the share the serving model answered correctly")
    return _png(fig)
