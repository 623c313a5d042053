"""A linear probe: how well frozen sentence embeddings separate the classes, before any fine-tuning."""

from __future__ import annotations

import numpy as np

from tl_platform.evaluation.metrics import ClassificationReport, classification_report


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: tuple[str, ...],
    seed: int,
) -> ClassificationReport:
    """Fit logistic regression on train embeddings and score it on the test embeddings."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    classifier.fit(train_x, train_y)
    return classification_report(classifier.predict_proba(test_x), test_y, class_names)
