"""Pictures of evaluation results, written as PNG for the Dagster UI and MLflow."""

from __future__ import annotations

from pathlib import Path

from tl_platform.evaluation.metrics import ClassificationReport


def plot_confusion_matrix(report: ClassificationReport, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers
    import matplotlib.pyplot as plt

    counts = report.confusion
    names = report.class_names
    fig, ax = plt.subplots(figsize=(3.2 + 0.5 * len(names), 2.8 + 0.5 * len(names)), dpi=110)
    image = ax.imshow(counts, cmap="Blues")
    peak = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {report.accuracy:.3f}, n={report.n}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
