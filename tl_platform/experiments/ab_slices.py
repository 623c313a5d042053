"""Per-slice effects with a multiple-comparison correction, and the slices where the challenger loses.

Testing ten slices at alpha 0.05 finds a "significant" one by chance about 40% of the time, so slice p-values
are adjusted together: Holm (family-wise error, the default: a flagged slice is a reason to roll back) or
Benjamini-Hochberg (false discovery rate, for exploring many slices). A slice is flagged as harmed when its
adjusted p-value is below alpha and its effect points the worse way, even if the challenger wins overall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tl_platform.experiments.ab_spec import Direction, MetricKind
from tl_platform.experiments.ab_stats import ArmStats, EffectResult, compare_arms

Correction = Literal["holm", "bh"]
CORRECTIONS: tuple[Correction, ...] = ("holm", "bh")
_STATSMODELS_METHOD = {"holm": "holm", "bh": "fdr_bh"}
MIN_SLICE_UNITS = 30  # per arm; below it a slice is reported as too small, not tested


def adjust_p_values(p_values: ArrayLike, method: Correction = "holm") -> NDArray[np.float64]:
    """Adjusted p-values (Holm or Benjamini-Hochberg), in the input order."""
    from statsmodels.stats.multitest import multipletests  # lazily, as everywhere statsmodels is used here

    if method not in CORRECTIONS:
        raise ValueError(f"method: must be one of {list(CORRECTIONS)}, got {method!r}")
    values = np.asarray(p_values, dtype=np.float64)
    if values.size == 0:
        return values
    return np.asarray(multipletests(values, method=_STATSMODELS_METHOD[method])[1], dtype=np.float64)


@dataclass(frozen=True)
class SliceEffect:
    """One slice value's effect; ``adjusted_p`` is None when it was not tested (too small or degenerate)."""

    key: str
    value: str
    result: EffectResult
    adjusted_p: float | None
    harmed: bool
    improved: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "adjusted_p": self.adjusted_p, "harmed": self.harmed,
                "improved": self.improved, "note": self.note, "result": self.result.to_json()}


@dataclass(frozen=True)
class SliceReport:
    method: Correction
    alpha: float
    effects: tuple[SliceEffect, ...]

    @property
    def harmed(self) -> tuple[SliceEffect, ...]:
        """Slices where the challenger is significantly worse after the correction."""
        return tuple(effect for effect in self.effects if effect.harmed)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "alpha": self.alpha, "effects": [e.to_json() for e in self.effects],
                "harmed": [f"{e.key}={e.value}" for e in self.harmed]}


def slice_report(
    slices: Mapping[tuple[str, str], tuple[ArmStats, ArmStats]],
    kind: MetricKind,
    direction: Direction,
    alpha: float = 0.05,
    method: Correction = "holm",
    min_units: int = MIN_SLICE_UNITS,
) -> SliceReport:
    """Effects per ``(key, value) -> (champion, challenger)``, corrected together across every tested slice.

    Slices with fewer than ``min_units`` units in an arm, or a degenerate result, are reported with a note and
    left out of the correction (so they neither count towards nor dilute it).
    """
    keys: Sequence[tuple[str, str]] = sorted(slices)
    results = {key: compare_arms(kind, *slices[key], alpha=alpha) for key in keys}
    tested = [key for key in keys if results[key].ok and results[key].p_value is not None
              and min(results[key].control.n, results[key].treatment.n) >= min_units]
    raw_p = [float(results[k].p_value or 0.0) for k in tested]  # tested results all carry a p-value
    adjusted = dict(zip(tested, adjust_p_values(raw_p, method), strict=True))
    effects = []
    for key in keys:
        result = results[key]
        if key not in adjusted:
            small = min(result.control.n, result.treatment.n) < min_units
            note = (f"not tested: fewer than {min_units} units in an arm" if small and result.ok
                    else f"not tested: {result.reason}")
            effects.append(SliceEffect(key[0], key[1], result, None, False, False, note))
            continue
        p = float(adjusted[key])
        assert result.difference is not None
        better = result.difference > 0 if direction == "higher" else result.difference < 0
        harmed, improved = p < alpha and not better, p < alpha and better
        note = ("challenger significantly worse" if harmed else "challenger significantly better" if improved
                else "no significant difference")
        effects.append(SliceEffect(key[0], key[1], result, p, harmed, improved, f"{note} ({method}-adjusted p = {p:.3g})"))
    return SliceReport(method, alpha, tuple(effects))
