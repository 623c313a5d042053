"""Monitoring features of a request: text length, share of unknown tokens, and a low-dimensional projection of
the sentence embedding, fitted on the training split at export time so that serving and drift detection
project every request the same way."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

DEFAULT_COMPONENTS = 4


@dataclass(frozen=True)
class EmbeddingProjection:
    """A PCA basis: ``(embedding - mean) @ components.T`` gives the monitored coordinates."""

    mean: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]
    explained_variance_ratio: tuple[float, ...]

    @classmethod
    def fit(cls, embeddings: np.ndarray, n_components: int = DEFAULT_COMPONENTS, seed: int = 0) -> EmbeddingProjection:
        from sklearn.decomposition import PCA

        if embeddings.ndim != 2 or embeddings.shape[0] <= n_components:
            raise ValueError(
                f"fitting {n_components} components needs more than {n_components} embeddings, got shape {embeddings.shape}"
            )
        pca = PCA(n_components=n_components, random_state=seed).fit(embeddings)
        return cls(
            mean=tuple(float(v) for v in pca.mean_),
            components=tuple(tuple(float(v) for v in row) for row in pca.components_),
            explained_variance_ratio=tuple(float(v) for v in pca.explained_variance_ratio_),
        )

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # built once: converting the tuples on every request cost more than the projection itself
        return np.asarray(self.mean, dtype=np.float64), np.asarray(self.components, dtype=np.float64).T.copy()

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        mean, basis = self._arrays
        return np.asarray((np.asarray(embeddings, dtype=np.float64) - mean) @ basis)

    def to_json(self) -> dict[str, object]:
        return {
            "mean": list(self.mean),
            "components": [list(row) for row in self.components],
            "explained_variance_ratio": list(self.explained_variance_ratio),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingProjection:
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            components=tuple(tuple(float(v) for v in row) for row in data["components"]),
            explained_variance_ratio=tuple(float(v) for v in data["explained_variance_ratio"]),
        )
