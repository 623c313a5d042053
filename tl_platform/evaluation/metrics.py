"""Classification metrics on the eval suite: accuracy, macro-F1, per-class scores, ECE and confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_ECE_BINS = 15


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Scores of predicted class probabilities against true labels.

    ``confusion[i][j]`` counts examples of true class i predicted as class j.
    """

    n: int
    accuracy: float
    macro_f1: float
    ece: float
    per_class: dict[str, ClassScores]
    confusion: tuple[tuple[int, ...], ...]
    class_names: tuple[str, ...]

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Flat numeric metrics, for a tracker or asset metadata."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1, f"{prefix}ece": self.ece}
        for name, scores in self.per_class.items():
            out[f"{prefix}f1_{name}"] = scores.f1
            out[f"{prefix}recall_{name}"] = scores.recall
            out[f"{prefix}precision_{name}"] = scores.precision
        return out

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| weighted by bin share."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_report(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str]
) -> ClassificationReport:
    """Score an (n, k) array of class probabilities against n true class indices."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    probs = np.asarray(probabilities, dtype=float)
    truth = np.asarray(labels, dtype=int)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probabilities must have shape (n, {k}), got {probs.shape}")
    if probs.shape[0] != truth.shape[0] or truth.shape[0] == 0:
        raise ValueError(f"need one label per row and at least one row, got {probs.shape[0]} rows, {truth.shape[0]} labels")
    predicted = probs.argmax(axis=1)
    classes = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0
    )
    per_class = {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(class_names)
    }
    confusion = confusion_matrix(truth, predicted, labels=classes)
    return ClassificationReport(
        n=int(truth.shape[0]),
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
        ece=expected_calibration_error(probs, truth),
        per_class=per_class,
        confusion=tuple(tuple(int(c) for c in row) for row in confusion),
        class_names=tuple(class_names),
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
