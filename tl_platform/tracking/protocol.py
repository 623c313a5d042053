"""The narrow interface training code logs through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class RunTracker(Protocol):
    """Where per-step parameters and metrics of one training run go."""

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...


class NullTracker:
    """Records metrics in memory; for library use without a tracking server, and for tests."""

    def __init__(self) -> None:
        self.params: dict[str, object] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    def log_params(self, params: Mapping[str, object]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))
