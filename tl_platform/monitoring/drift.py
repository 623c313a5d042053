"""Feature drift of one window of served traffic against the model version's reference profile.

Every feature gets every score the issue asks for: PSI and KL on the reference's bins (categories for
categorical features), Kolmogorov-Smirnov for numeric features, chi-squared and Jensen-Shannon for categorical
ones; the projection gets MMD. What decides "drifted" is an effect size, because over a day of traffic every
p-value is tiny: KL for numeric features, Jensen-Shannon distance for categorical ones, each at or above its
threshold, with the feature's p-value (KS, chi-squared) below ``p_value`` as a gate, so that the noise of a
small window cannot cross the threshold alone. The projection drifts when squared MMD is at least ``mmd`` with
a permutation p-value below ``mmd_p_value``.

The window drifts when at least ``min_drifted_features`` features drift, or the multivariate test does (if
``multivariate_votes``). A window with fewer than ``min_rows`` rows gets status ``insufficient_data`` and no
scores at all. tests/unit/test_drift_simulation.py measures the defaults' false-alarm and detection rates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np

from tl_platform.monitoring import drift_tests as tests
from tl_platform.monitoring.reference import CategoricalReference, NumericReference, ReferenceProfile, category_counts

Status = Literal["drift", "no_drift", "insufficient_data"]
NUMERIC_TESTS = ("kl", "psi")
# Above this many sample pairs KS takes SciPy's asymptotic p-value: the exact one costs tens of milliseconds a
# feature there and differs in the fourth significant digit, far from mattering to a gate at 0.01.
KS_EXACT_MAX_PAIRS = 10_000_000
CATEGORICAL_TESTS = ("jensenshannon", "kl", "psi")


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature, the projection and the window count as drifted.

    kl, psi: thresholds on KL(reference || current) and PSI over binned shares, > 0.
    jensenshannon: threshold on the Jensen-Shannon distance (natural log), in (0, 0.8326] (sqrt(ln 2) is its maximum).
    p_value: the gate, in (0, 1]: a feature drifts only if its KS (numeric) or chi-squared (categorical)
        p-value is below it as well; 1 turns the gate off.
    mmd, mmd_p_value: squared MMD threshold (> 0) and its permutation p-value gate, in (0, 1].
    mmd_rows, mmd_permutations: rows per side (50..5,000) and permutations (20..10,000) of the MMD test.
    numeric_test, categorical_test: the score that decides per kind: "kl" or "psi"; "jensenshannon", "kl" or "psi".
    per_feature: feature name -> threshold (> 0) on that feature's deciding score, replacing the default.
    min_rows: fewer rows in the window (or non-missing values of a feature) give "insufficient_data", >= 2.
    min_drifted_features: drifted features that make the window drift, >= 1.
    multivariate_votes: the MMD verdict alone also makes the window drift.
    pseudo_count: additive smoothing of empty bins for PSI and KL, > 0 (drift_tests explains it).
    """

    kl: float = tests.KL_THRESHOLD
    psi: float = tests.PSI_THRESHOLD
    jensenshannon: float = tests.JS_THRESHOLD
    p_value: float = tests.KS_P_VALUE
    mmd: float = tests.MMD_THRESHOLD
    mmd_p_value: float = tests.MMD_P_VALUE
    mmd_rows: int = tests.MMD_MAX_ROWS
    mmd_permutations: int = tests.MMD_PERMUTATIONS
    numeric_test: str = "kl"
    categorical_test: str = "jensenshannon"
    per_feature: Mapping[str, float] = field(default_factory=dict)
    min_rows: int = 200
    min_drifted_features: int = 1
    multivariate_votes: bool = True
    pseudo_count: float = tests.DEFAULT_PSEUDO_COUNT

    def __post_init__(self) -> None:
        for name in ("kl", "psi", "mmd", "pseudo_count"):
            _check_float(name, getattr(self, name), 0.0, math.inf, "(0, inf)")
        _check_float("jensenshannon", self.jensenshannon, 0.0, math.sqrt(math.log(2)), "(0, 0.8326]")
        for name in ("p_value", "mmd_p_value"):
            _check_float(name, getattr(self, name), 0.0, 1.0, "(0, 1]")
        _check_int("mmd_rows", self.mmd_rows, 50, 5_000)
        _check_int("mmd_permutations", self.mmd_permutations, 20, 10_000)
        _check_int("min_rows", self.min_rows, 2, 10**12)
        _check_int("min_drifted_features", self.min_drifted_features, 1, 10**6)
        if self.numeric_test not in NUMERIC_TESTS:
            raise ValueError(f"numeric_test must be one of {list(NUMERIC_TESTS)}, got {self.numeric_test!r}")
        if self.categorical_test not in CATEGORICAL_TESTS:
            raise ValueError(f"categorical_test must be one of {list(CATEGORICAL_TESTS)}, got {self.categorical_test!r}")
        for feature, value in self.per_feature.items():
            _check_float(f"per_feature[{feature!r}]", value, 0.0, math.inf, "(0, inf)")
        object.__setattr__(self, "per_feature", dict(sorted(self.per_feature.items())))

    def threshold(self, feature: str, test: str) -> float:
        return float(self.per_feature.get(feature, getattr(self, test)))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "per_feature": dict(self.per_feature)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftThresholds:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown drift threshold fields {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    @classmethod
    def from_config(cls, fields: Mapping[str, Any], per_feature: Mapping[str, float] | None = None) -> DriftThresholds:
        """Thresholds from a service's config: ``fields`` names DriftThresholds fields, ``per_feature`` adds to
        (and overrides) any ``per_feature`` among them."""
        merged = {**dict(fields.get("per_feature", {})), **dict(per_feature or {})}
        return cls.from_json({**fields, "per_feature": merged})


def _check_float(name: str, value: object, low: float, high: float, shown: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low < value <= high):
        raise ValueError(f"{name} must be a number in {shown}, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's scores. ``score`` is the deciding test's value, ``p_value`` the gate's; ``scores`` holds
    every test (psi, kl, and ks, ks_p_value or chi2, chi2_p_value, jensenshannon). Empty when insufficient."""

    feature: str
    kind: Literal["numeric", "categorical"]
    status: Status
    rows: int  # values compared: non-missing values of the window (or of its sample)
    missing: int
    test: str
    threshold: float
    score: float | None = None
    p_value: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    unseen_categories: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        return self.status == "drift"


@dataclass(frozen=True)
class MultivariateDrift:
    """MMD on the projection: computed on ``current_rows`` of ``rows`` complete window rows against
    ``reference_rows`` of the reference's projection sample."""

    features: tuple[str, ...]
    status: Status
    rows: int
    threshold: float
    p_value_threshold: float
    mmd2: float | None = None
    p_value: float | None = None
    bandwidth: float | None = None
    reference_rows: int = 0
    current_rows: int = 0
    permutations: int = 0

    @property
    def drifted(self) -> bool:
        return self.status == "drift"


@dataclass(frozen=True)
class DriftResult:
    """A window's verdict: ``status`` (drift, no_drift, or insufficient_data with no scores when the window has
    fewer than ``thresholds.min_rows`` rows), every feature's scores, the multivariate test, and the thresholds
    that judged them (so a stored result says how it was decided)."""

    status: Status
    rows: int  # rows in the window
    rows_used: int  # rows the statistics were computed on (a bounded sample of a large window)
    features: tuple[FeatureDrift, ...]
    multivariate: MultivariateDrift | None
    thresholds: DriftThresholds

    @property
    def drifted(self) -> bool:
        return self.status == "drift"

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.feature for f in self.features if f.drifted)

    def feature(self, name: str) -> FeatureDrift:
        for entry in self.features:
            if entry.feature == name:
                return entry
        raise KeyError(f"no feature {name!r} in this result; it has {[f.feature for f in self.features]}")

    def deciding_scores(self) -> dict[str, float]:
        """Each judged feature's deciding score, and the projection's squared MMD as ``projection_mmd2``."""
        scores = {f.feature: f.score for f in self.features if f.score is not None}
        if self.multivariate is not None and self.multivariate.mmd2 is not None:
            scores["projection_mmd2"] = self.multivariate.mmd2
        return scores

    def deciding_thresholds(self) -> dict[str, float]:
        """The thresholds of ``deciding_scores``, by the same keys."""
        thresholds = {f.feature: f.threshold for f in self.features if f.score is not None}
        if self.multivariate is not None and self.multivariate.mmd2 is not None:
            thresholds["projection_mmd2"] = self.multivariate.threshold
        return thresholds

    def markdown_table(self) -> str:
        """Every feature's scores as a Markdown table (the asset's metadata)."""
        lines = ["| feature | status | deciding | score | threshold | gate p | other scores |", "|---|---|---|---|---|---|---|"]
        for f in self.features:
            others = ", ".join(f"{k} {v:.4g}" for k, v in f.scores.items() if k != f.test)
            score = "" if f.score is None else f"{f.score:.4g}"
            p_value = "" if f.p_value is None else f"{f.p_value:.3g}"
            lines.append(f"| {f.feature} | {f.status} | {f.test} | {score} | {f.threshold:.4g} | {p_value} | {others} |")
        mv = self.multivariate
        if mv is not None:
            score = "" if mv.mmd2 is None else f"{mv.mmd2:.4g}"
            p_value = "" if mv.p_value is None else f"{mv.p_value:.3g}"
            lines.append(f"| projection ({len(mv.features)} components) | {mv.status} | mmd2 | {score} | {mv.threshold:.4g} | "
                         f"{p_value} | {mv.current_rows} vs {mv.reference_rows} rows, {mv.permutations} permutations |")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for a person: the verdict, what drifted and by how much, and on how many rows."""
        rows = f"{self.rows:,} rows" + (f" ({self.rows_used:,} sampled)" if self.rows_used < self.rows else "")
        if self.status == "insufficient_data" and not self.features:
            return f"insufficient data: {rows}, at least {self.thresholds.min_rows:,} needed; no verdict"
        parts = [f"{f.feature} {f.test} {f.score:.3g} >= {f.threshold:.3g}" for f in self.features if f.drifted]
        mv = self.multivariate
        if mv is not None and mv.status != "insufficient_data":
            parts.append(f"projection mmd2 {mv.mmd2:.3g} p={mv.p_value:.3g}" + (" drifted" if mv.drifted else " no drift"))
        judged = sum(f.status != "insufficient_data" for f in self.features)
        verdict = {"drift": "drift", "no_drift": "no drift", "insufficient_data": "insufficient data"}[self.status]
        return f"{verdict}: {len(self.drifted_features)} of {judged} features drifted" + "".join(
            f"; {p}" for p in parts
        ) + f"; {rows}"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rows": self.rows,
            "rows_used": self.rows_used,
            "drifted_features": list(self.drifted_features),
            "features": [{**asdict(f), "unseen_categories": list(f.unseen_categories)} for f in self.features],
            "multivariate": None if self.multivariate is None else {
                **asdict(self.multivariate), "features": list(self.multivariate.features)
            },
            "thresholds": self.thresholds.to_json(),
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftResult:
        features = tuple(
            FeatureDrift(**{**f, "unseen_categories": tuple(f["unseen_categories"])}) for f in data["features"]
        )
        mv = data["multivariate"]
        return cls(
            status=data["status"],
            rows=int(data["rows"]),
            rows_used=int(data["rows_used"]),
            features=features,
            multivariate=None if mv is None else MultivariateDrift(**{**mv, "features": tuple(mv["features"])}),
            thresholds=DriftThresholds.from_json(data["thresholds"]),
        )


class WindowSample(Protocol):
    """A window's feature columns, possibly a bounded sample of its ``rows`` (window.FeatureWindow is one)."""

    @property
    def columns(self) -> Mapping[str, np.ndarray]: ...

    @property
    def rows(self) -> int: ...


def _numeric_drift(ref: NumericReference, values: np.ndarray, thresholds: DriftThresholds) -> FeatureDrift:
    raw = np.asarray(values, dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    test = thresholds.numeric_test
    threshold = thresholds.threshold(ref.name, test)
    result = FeatureDrift(ref.name, "numeric", "insufficient_data", int(finite.size), int(raw.size - finite.size), test, threshold)
    if finite.size < thresholds.min_rows:
        return result
    counts = ref.bin_counts(finite)
    pseudo = thresholds.pseudo_count
    kl = tests.kl_divergence(ref.counts, counts, threshold=thresholds.kl, pseudo_count=pseudo)
    psi = tests.psi(ref.counts, counts, threshold=thresholds.psi, pseudo_count=pseudo)
    method: tests.KSMethod = "asymp" if len(ref.sample) * finite.size > KS_EXACT_MAX_PAIRS else "auto"
    ks = tests.ks_test(ref.sample, finite, alpha=thresholds.p_value, method=method)
    score = {"kl": kl.value, "psi": psi.value}[test]
    assert ks.p_value is not None
    drifted = score >= threshold and ks.p_value < thresholds.p_value
    return replace(
        result, status="drift" if drifted else "no_drift", score=score, p_value=ks.p_value,
        scores={"kl": kl.value, "psi": psi.value, "ks": ks.value, "ks_p_value": ks.p_value},
    )


def _categorical_drift(ref: CategoricalReference, values: np.ndarray, thresholds: DriftThresholds) -> FeatureDrift:
    observed, missing = category_counts(values)
    test = thresholds.categorical_test
    threshold = thresholds.threshold(ref.name, test)
    rows = sum(observed.values())
    categories, reference_counts, current_counts = ref.aligned_counts(observed)
    unseen = tuple(c for c in categories if c not in ref.counts)
    result = FeatureDrift(ref.name, "categorical", "insufficient_data", rows, missing, test, threshold, unseen_categories=unseen)
    if rows < thresholds.min_rows:
        return result
    pseudo = thresholds.pseudo_count
    kl = tests.kl_divergence(reference_counts, current_counts, threshold=thresholds.kl, pseudo_count=pseudo)
    psi = tests.psi(reference_counts, current_counts, threshold=thresholds.psi, pseudo_count=pseudo)
    js = tests.jensen_shannon(reference_counts, current_counts, threshold=thresholds.jensenshannon)
    chi2 = tests.chi_squared(reference_counts, current_counts, alpha=thresholds.p_value)
    score = {"kl": kl.value, "psi": psi.value, "jensenshannon": js.value}[test]
    assert chi2.p_value is not None
    drifted = score >= threshold and chi2.p_value < thresholds.p_value
    return replace(
        result, status="drift" if drifted else "no_drift", score=score, p_value=chi2.p_value,
        scores={"kl": kl.value, "psi": psi.value, "jensenshannon": js.value, "chi2": chi2.value,
                "chi2_p_value": chi2.p_value},
    )


def _multivariate_drift(
    profile: ReferenceProfile, columns: Mapping[str, np.ndarray], thresholds: DriftThresholds, seed: int
) -> MultivariateDrift:
    names = profile.projection_features
    points = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
    points = points[np.all(np.isfinite(points), axis=1)]
    result = MultivariateDrift(names, "insufficient_data", int(points.shape[0]), thresholds.mmd, thresholds.mmd_p_value)
    if points.shape[0] < thresholds.min_rows:
        return result
    verdict, mmd = tests.mmd_test(
        profile.projection_array(), points, threshold=thresholds.mmd, alpha=thresholds.mmd_p_value,
        permutations=thresholds.mmd_permutations, max_rows=thresholds.mmd_rows, seed=seed,
    )
    return replace(
        result, status="drift" if verdict.drifted else "no_drift", mmd2=mmd.value, p_value=mmd.p_value,
        bandwidth=mmd.bandwidth, reference_rows=mmd.reference_rows, current_rows=mmd.current_rows,
        permutations=mmd.permutations,
    )


def _columns(profile: ReferenceProfile, current: Mapping[str, np.ndarray] | WindowSample) -> tuple[Mapping[str, np.ndarray], int, int]:
    columns = current if isinstance(current, Mapping) else current.columns
    unknown = sorted(set(columns) - set(profile.features))
    if unknown:
        raise ValueError(f"current: unknown features {unknown}; the reference has {list(profile.features)}")
    absent = [name for name in profile.features if name not in columns]
    if absent:
        raise ValueError(f"current: missing features {absent}; the reference has {list(profile.features)}")
    lengths = {name: len(columns[name]) for name in profile.features}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"current: every feature needs one value per row, got lengths {lengths}")
    used = next(iter(lengths.values()))
    rows = used if isinstance(current, Mapping) else int(current.rows)
    if rows < used:
        raise ValueError(f"current: rows ({rows}) cannot be fewer than the values given ({used})")
    return columns, rows, used


def detect_drift(
    profile: ReferenceProfile,
    current: Mapping[str, np.ndarray] | WindowSample,
    thresholds: DriftThresholds | None = None,
    seed: int = 0,
) -> DriftResult:
    """Score one window against ``profile``. ``current`` maps every profile feature to its values (numeric as
    floats, NaN for missing; categorical as strings or booleans, None for missing), or is a window sample
    (window.read_window) whose ``rows`` counts the whole window. ``seed`` drives MMD's subsample and permutations.
    """
    thresholds = thresholds or DriftThresholds()
    unknown = sorted(set(thresholds.per_feature) - set(profile.features))
    if unknown:
        raise ValueError(f"per_feature: unknown features {unknown}; the reference has {list(profile.features)}")
    columns, rows, used = _columns(profile, current)
    if rows < thresholds.min_rows:
        return DriftResult("insufficient_data", rows, used, (), None, thresholds)
    features = (
        *(_numeric_drift(ref, columns[ref.name], thresholds) for ref in profile.numeric),
        *(_categorical_drift(ref, columns[ref.name], thresholds) for ref in profile.categorical),
    )
    multivariate = _multivariate_drift(profile, columns, thresholds, seed)
    drifted = sum(f.drifted for f in features) >= thresholds.min_drifted_features or (
        thresholds.multivariate_votes and multivariate.drifted
    )
    judged = any(f.status != "insufficient_data" for f in features) or multivariate.status != "insufficient_data"
    status: Status = "drift" if drifted else ("no_drift" if judged else "insufficient_data")
    return DriftResult(status, rows, used, features, multivariate, thresholds)
