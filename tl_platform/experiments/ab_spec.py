"""The pre-registered A/B experiment spec: what is measured, how big an effect matters, and what must not break.

Written down before any traffic is split, stored as canonical JSON with its SHA-256 digest, and compared with
``compare_specs`` at every later run: a spec that differs from the stored one after the start is refused, the
message naming each changed field (``alpha: 0.05 -> 0.1``). The minimum sample size per arm follows from the
primary metric, the minimum detectable effect (absolute), alpha and power by statsmodels' normal power
calculation (Cohen's h for a proportion, Cohen's d from a baseline standard deviation for a mean).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tl_platform.serving.deployment import ROUTING_FIELD_CHARS

MetricKind = Literal["proportion", "mean"]
Direction = Literal["higher", "lower"]  # which way is better
GuardrailComparison = Literal["absolute", "vs_champion"]
METRIC_KINDS: tuple[MetricKind, ...] = ("proportion", "mean")
DIRECTIONS: tuple[Direction, ...] = ("higher", "lower")
GUARDRAIL_COMPARISONS: tuple[GuardrailComparison, ...] = ("absolute", "vs_champion")
# Metrics the aggregation computes itself; any other name is a user metric the caller supplies values for.
KNOWN_GUARDRAIL_METRICS = ("p99_latency_ms", "error_rate", "cost_per_1k_requests", "accuracy", "outcome")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # also safe inside a JSON path for slice keys
SPEC_VERSION = 1


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_name(field_name: str, value: str) -> None:
    _require(isinstance(value, str) and bool(_NAME.match(value)),
             f"{field_name}: 1-64 characters of letters, digits and _ . : -, got {value!r}")


def _check_choice(field_name: str, value: str, allowed: Sequence[str]) -> None:
    _require(value in allowed, f"{field_name}: must be one of {list(allowed)}, got {value!r}")


def _check_finite(field_name: str, value: float) -> None:
    _require(isinstance(value, int | float) and math.isfinite(value), f"{field_name}: must be a finite number, got {value!r}")


@dataclass(frozen=True)
class PrimaryMetric:
    """The one metric the decision rests on.

    ``kind`` "proportion": per-unit accuracy on feedback labels; ``baseline`` is the champion's expected
    accuracy in (0, 1) (required). ``kind`` "mean": the numeric business ``outcome`` of the feedback table;
    ``baseline_std`` is the standard deviation of the per-unit mean outcome (required), ``baseline`` its mean
    (optional, shown in the summary). ``direction``: whether higher or lower values are better.
    """

    name: str
    kind: MetricKind
    direction: Direction = "higher"
    baseline: float | None = None
    baseline_std: float | None = None

    def __post_init__(self) -> None:
        check_name("primary.name", self.name)
        _check_choice("primary.kind", self.kind, METRIC_KINDS)
        _check_choice("primary.direction", self.direction, DIRECTIONS)
        if self.kind == "proportion":
            _require(self.baseline is not None and 0.0 < self.baseline < 1.0,
                     f"primary.baseline: a proportion metric needs the baseline rate in (0, 1), got {self.baseline!r}")
        else:
            _require(self.baseline_std is not None and math.isfinite(self.baseline_std) and self.baseline_std > 0,
                     f"primary.baseline_std: a mean metric needs the per-unit standard deviation > 0, got {self.baseline_std!r}")
            if self.baseline is not None:
                _check_finite("primary.baseline", self.baseline)


@dataclass(frozen=True)
class Guardrail:
    """A metric the challenger must not break, whatever the primary metric says.

    ``direction`` is which way is better; the guardrail is breached when the compared value is on the worse
    side of ``limit``. ``comparison`` "absolute" compares the challenger's value (p99 latency at most 250 ms);
    "vs_champion" compares challenger minus champion (accuracy on ``slice`` at least -0.02 against the
    champion). ``slice`` restricts the metric to rows whose attributes match (``{"domain": "yelp"}``).
    """

    name: str
    metric: str
    limit: float
    direction: Direction
    comparison: GuardrailComparison = "absolute"
    slice: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        check_name(f"guardrails[{self.name!r}].name", self.name)
        check_name(f"guardrails[{self.name!r}].metric", self.metric)
        _check_finite(f"guardrails[{self.name!r}].limit", self.limit)
        _check_choice(f"guardrails[{self.name!r}].direction", self.direction, DIRECTIONS)
        _check_choice(f"guardrails[{self.name!r}].comparison", self.comparison, GUARDRAIL_COMPARISONS)
        for key, value in (self.slice or {}).items():
            check_name(f"guardrails[{self.name!r}].slice key", key)
            _require(isinstance(value, str) and 0 < len(value) <= 256,
                     f"guardrails[{self.name!r}].slice[{key!r}]: a non-empty string of at most 256 characters, got {value!r}")

    def breached(self, compared_value: float) -> bool:
        """Whether ``compared_value`` (the challenger's value, or its difference from the champion) is worse than
        the limit. Pass a confidence bound instead of the estimate to require a significant breach."""
        return compared_value > self.limit if self.direction == "lower" else compared_value < self.limit

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "limit": self.limit, "direction": self.direction,
                "comparison": self.comparison, "slice": dict(sorted(self.slice.items())) if self.slice else None}


@dataclass(frozen=True)
class SampleSize:
    """Units needed per arm for the planned power; ``effect_size`` is Cohen's h (proportion) or d (mean)."""

    champion: int
    challenger: int
    effect_size: float

    @property
    def total(self) -> int:
        return self.champion + self.challenger


@dataclass(frozen=True)
class ExperimentSpec:
    """An A/B experiment as pre-registered; frozen, validated at construction.

    ``mde``: the minimum detectable effect, absolute, in the metric's units (0.02 = two accuracy points).
    ``challenger_share``: share of units routed to the challenger during the experiment. ``holdout_share``:
    share of units kept on the old model after a ship, to keep measuring the effect. ``routing_salt``: hashed
    with each unit id to pick its arm; empty means a fresh random one (``secrets.token_hex``), so one
    experiment's units are not the next one's (``salt_generated`` then records that it was not given).
    """

    experiment_id: str
    primary: PrimaryMetric
    mde: float
    alpha: float = 0.05
    power: float = 0.8
    guardrails: tuple[Guardrail, ...] = ()
    slices: tuple[str, ...] = ()
    min_duration_days: int = 7
    max_duration_days: int = 28
    challenger_share: float = 0.5
    holdout_share: float = 0.05
    routing_salt: str = ""
    salt_generated: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        check_name("experiment_id", self.experiment_id)
        _require(len(self.experiment_id) <= ROUTING_FIELD_CHARS,
                 f"experiment_id: at most {ROUTING_FIELD_CHARS} characters, got {len(self.experiment_id)}")
        _require(isinstance(self.primary, PrimaryMetric), f"primary: a PrimaryMetric, got {type(self.primary).__name__}")
        _require(isinstance(self.mde, int | float) and math.isfinite(self.mde) and self.mde > 0,
                 f"mde: the minimum detectable effect must be a positive absolute difference, got {self.mde!r}")
        if self.primary.kind == "proportion":
            assert self.primary.baseline is not None
            target = self._target_rate()
            _require(0.0 < target < 1.0, f"mde: baseline {self.primary.baseline} moved by {self.mde} in the "
                                         f"{self.primary.direction} direction leaves (0, 1): {target}")
        _require(0.0 < self.alpha < 0.5, f"alpha: must be in (0, 0.5), got {self.alpha!r}")
        _require(0.5 <= self.power < 1.0, f"power: must be in [0.5, 1), got {self.power!r}")
        names = [g.name for g in self.guardrails]
        _require(len(set(names)) == len(names), f"guardrails: names must be distinct, got {names}")
        for key in self.slices:
            check_name("slices", key)
        _require(len(set(self.slices)) == len(self.slices), f"slices: keys must be distinct, got {list(self.slices)}")
        _require(isinstance(self.min_duration_days, int) and 1 <= self.min_duration_days <= 365,
                 f"min_duration_days: an integer in [1, 365], got {self.min_duration_days!r}")
        _require(isinstance(self.max_duration_days, int) and self.min_duration_days <= self.max_duration_days <= 365,
                 f"max_duration_days: an integer in [min_duration_days={self.min_duration_days}, 365], got {self.max_duration_days!r}")
        _require(0.0 < self.challenger_share < 1.0, f"challenger_share: must be in (0, 1), got {self.challenger_share!r}")
        _require(0.0 <= self.holdout_share <= 0.5, f"holdout_share: must be in [0, 0.5], got {self.holdout_share!r}")
        if not self.routing_salt:
            object.__setattr__(self, "routing_salt", secrets.token_hex(16))
            object.__setattr__(self, "salt_generated", True)
        _require(len(self.routing_salt) <= ROUTING_FIELD_CHARS,
                 f"routing_salt: at most {ROUTING_FIELD_CHARS} characters, got {len(self.routing_salt)}")

    def _target_rate(self) -> float:
        assert self.primary.baseline is not None
        sign = 1.0 if self.primary.direction == "higher" else -1.0
        return self.primary.baseline + sign * self.mde

    # -- the power calculation ------------------------------------------------------------------------------

    def effect_size(self) -> float:
        """Standardised MDE: Cohen's h between the target and the baseline rate, or MDE / baseline_std."""
        from statsmodels.stats.proportion import proportion_effectsize  # lazily: a second to import

        if self.primary.kind == "proportion":
            assert self.primary.baseline is not None
            return abs(float(proportion_effectsize(self._target_rate(), self.primary.baseline)))
        assert self.primary.baseline_std is not None
        return self.mde / self.primary.baseline_std

    def sample_size(self) -> SampleSize:
        """Units per arm for a two-sided test at ``alpha`` to reach ``power`` at the MDE, with the planned split."""
        from statsmodels.stats.power import NormalIndPower  # lazily: a spec is built where no power is asked

        ratio = self.challenger_share / (1.0 - self.challenger_share)  # challenger units per champion unit
        effect = self.effect_size()
        champion = float(NormalIndPower().solve_power(effect_size=effect, alpha=self.alpha, power=self.power,
                                                      ratio=ratio, alternative="two-sided"))
        return SampleSize(math.ceil(champion), math.ceil(champion * ratio), effect)

    def power_summary(self) -> str:
        """The power calculation in words, for the asset metadata and the person who signs off the experiment."""
        size = self.sample_size()
        metric = self.primary
        better = "higher" if metric.direction == "higher" else "lower"
        if metric.kind == "proportion":
            assert metric.baseline is not None
            effect = (f"baseline {metric.baseline:.4g}, MDE {self.mde:+.4g} absolute "
                      f"({metric.baseline:.4g} -> {self._target_rate():.4g}), Cohen's h {size.effect_size:.4f}")
        else:
            shown = f"baseline mean {metric.baseline:.4g}, " if metric.baseline is not None else ""
            effect = (f"{shown}per-unit std {metric.baseline_std:.4g}, MDE {self.mde:.4g} absolute, "
                      f"Cohen's d {size.effect_size:.4f}")
        split = f"{1 - self.challenger_share:.0%}/{self.challenger_share:.0%} champion/challenger"
        return (f"Primary metric {metric.name} ({metric.kind}, {better} is better): {effect}. Two-sided alpha "
                f"{self.alpha:g}, power {self.power:.0%}, split {split}: at least {size.champion:,} champion units and "
                f"{size.challenger:,} challenger units ({size.total:,} in all), over at least {self.min_duration_days} "
                f"days. The unit of analysis is the unit id.")

    # -- storage --------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "spec_version": SPEC_VERSION, "experiment_id": self.experiment_id,
            "primary": {"name": self.primary.name, "kind": self.primary.kind, "direction": self.primary.direction,
                        "baseline": self.primary.baseline, "baseline_std": self.primary.baseline_std},
            "mde": self.mde, "alpha": self.alpha, "power": self.power,
            "guardrails": [g.to_json() for g in self.guardrails], "slices": list(self.slices),
            "min_duration_days": self.min_duration_days, "max_duration_days": self.max_duration_days,
            "challenger_share": self.challenger_share, "holdout_share": self.holdout_share,
            "routing_salt": self.routing_salt,
        }

    def canonical_json(self) -> str:
        """Sorted keys, no spaces: equal specs give equal text, so equal digests."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> ExperimentSpec:
        """The spec back from ``to_json`` or ``canonical_json`` (a stored spec keeps its salt)."""
        raw: Mapping[str, Any] = json.loads(data) if isinstance(data, str) else data
        version = raw.get("spec_version", SPEC_VERSION)
        _require(version == SPEC_VERSION, f"spec_version: this code reads version {SPEC_VERSION}, got {version!r}")
        primary = raw["primary"]
        return cls(
            experiment_id=raw["experiment_id"],
            primary=PrimaryMetric(primary["name"], primary["kind"], primary.get("direction", "higher"),
                                  primary.get("baseline"), primary.get("baseline_std")),
            mde=raw["mde"], alpha=raw.get("alpha", 0.05), power=raw.get("power", 0.8),
            guardrails=tuple(Guardrail(g["name"], g["metric"], g["limit"], g["direction"],
                                       g.get("comparison", "absolute"), g.get("slice"))
                             for g in raw.get("guardrails", ())),
            slices=tuple(raw.get("slices", ())), min_duration_days=raw.get("min_duration_days", 7),
            max_duration_days=raw.get("max_duration_days", 28), challenger_share=raw.get("challenger_share", 0.5),
            holdout_share=raw.get("holdout_share", 0.05), routing_salt=raw.get("routing_salt", ""),
        )


# -- immutability after the start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecChange:
    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field}: {json.dumps(self.old, sort_keys=True)} -> {json.dumps(self.new, sort_keys=True)}"


class SpecChangedError(ValueError):
    """A proposed spec differs from the one stored when the experiment started; ``changes`` lists how."""

    def __init__(self, experiment_id: str, changes: Sequence[SpecChange]) -> None:
        self.changes = tuple(changes)
        listed = "; ".join(str(change) for change in self.changes)
        super().__init__(f"experiment {experiment_id!r} has started and its spec is immutable; the proposed spec "
                         f"changes {len(self.changes)} field(s): {listed}. Start a new experiment (a new "
                         f"experiment_id) to change them.")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    # guardrails are keyed by name, so removing one reads as one removal rather than a shift of every index
    if isinstance(value, Mapping):
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) and "name" in v for v in value):
        for item in value:
            out[f"{prefix}[{item['name']}]"] = item
    else:
        out[prefix] = value


def spec_changes(stored: ExperimentSpec, proposed: ExperimentSpec) -> tuple[SpecChange, ...]:
    """Each field whose value differs, as ``field: old -> new`` (a guardrail added or removed as a whole, one
    kept by name field by field); a proposed spec whose salt was generated (not given by its config) takes the
    stored salt, since a fresh salt per run is not a change of the experiment."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten(stored.to_json(), "", old)
    proposed_json = proposed.to_json()
    if proposed.salt_generated:
        proposed_json["routing_salt"] = stored.routing_salt
    _flatten(proposed_json, "", new)
    changes: list[SpecChange] = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            changes.extend(SpecChange(f"{name}.{key}", before.get(key), after.get(key))
                           for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key))
        elif before != after or (name in old) != (name in new):
            changes.append(SpecChange(name, before, after))
    return tuple(changes)


def compare_specs(stored: ExperimentSpec, proposed: ExperimentSpec) -> None:
    """Refuse a proposed spec that changes a started experiment: raise ``SpecChangedError`` listing every change."""
    changes = spec_changes(stored, proposed)
    if changes:
        raise SpecChangedError(stored.experiment_id, changes)
