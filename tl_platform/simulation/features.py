"""Synthetic monitoring features shaped like a served model's, for drift simulations and benchmarks.

Lognormal text lengths, a mostly-zero unknown-token share, confidence in [0.5, 1], a binary predicted label
and a projection with decreasing spread per component; each shift is a named parameter, so a simulation
states exactly what moved and by how much.
"""

from __future__ import annotations

import numpy as np

PROJECTION_SD = np.array([1.0, 0.7, 0.5, 0.4])


def synthetic_features(
    rng: np.random.Generator,
    n: int,
    length_shift: float = 0.0,
    positive_share: float = 0.55,
    projection_shift: float = 0.0,
    confidence_shape: float = 1.0,
) -> dict[str, np.ndarray]:
    """``n`` rows of the log's feature columns; ``length_shift`` moves log(characters), ``projection_shift``
    every projection component (in standard deviations), ``confidence_shape`` > 1 lowers confidence."""
    chars = np.maximum(1, rng.lognormal(4.3 + length_shift, 0.6, n).round())
    tokens = np.maximum(1, (chars / 4.5 + rng.normal(0, 2, n)).round())
    out = {
        "text_chars": chars,
        "token_count": tokens,
        "unknown_share": np.where(rng.random(n) < 0.8, 0.0, rng.beta(1, 20, n)),
        "truncated": tokens > 40,
        "confidence": 1 - rng.beta(confidence_shape, 6, n) / 2,
        "label": np.where(rng.random(n) < positive_share, "positive", "negative").astype(object),
    }
    projection = (rng.normal(size=(n, PROJECTION_SD.size)) + projection_shift) * PROJECTION_SD
    out.update({f"projection_{i}": projection[:, i] for i in range(PROJECTION_SD.size)})
    return out
