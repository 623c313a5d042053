"""Reference statistics of a model version, computed once at export time and sealed into its bundle.

Monitoring judges each model version against its own reference and never re-reads training data. Input
features (text length, tokens, unknown share, truncation) describe the training split; model features
(confidence, predicted label, the embedding projection) describe the held-out eval suite, because on its own
training texts the model is more confident than on unseen text.

Per numeric feature: bin edges at the reference's deciles (right-closed bins, open at both ends so every
current value falls in one), the reference's count per bin, quantiles, and a bounded seeded sample (for
Kolmogorov-Smirnov and for Evidently's reference frame). Per categorical feature: counts per category and a
sample. Plus a sample of the projection rows for the multivariate test. The JSON is deterministic for the same
input (sorted keys, no timestamps), so the bundle's content hash is too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PROFILE_FILE = "profile.json"
FORMAT_VERSION = 1
QUANTILE_LEVELS: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
INPUT_NUMERIC: tuple[str, ...] = ("text_chars", "token_count", "unknown_share")
INPUT_CATEGORICAL: tuple[str, ...] = ("truncated",)
MODEL_NUMERIC: tuple[str, ...] = ("confidence",)
MODEL_CATEGORICAL: tuple[str, ...] = ("label",)
MAX_PROJECTION_COMPONENTS = 8  # the prediction log's projection_0 .. projection_7
Source = Literal["input", "model"]


@dataclass(frozen=True)
class ReferenceConfig:
    """How the reference is summarised.

    bins: histogram bins per numeric feature, at the reference's quantiles (2..100; fewer remain where values
        tie, e.g. a feature that is mostly 0).
    sample_size: values kept per feature for Kolmogorov-Smirnov and Evidently's reference (100..100,000).
    projection_sample_size: projection rows kept for the multivariate test (50..10,000).
    seed: the samples' random seed.
    """

    bins: int = 10
    sample_size: int = 5_000
    projection_sample_size: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("bins", self.bins, 2, 100)
        _check_int("sample_size", self.sample_size, 100, 100_000)
        _check_int("projection_sample_size", self.projection_sample_size, 50, 10_000)
        _check_int("seed", self.seed, 0, 2**32 - 1)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class NumericReference:
    """``edges`` are the inner bin edges e_1 < ... < e_k; bin 0 is (-inf, e_1], bin i is (e_i, e_i+1], the last
    (e_k, inf), so ``counts`` has k + 1 entries."""

    name: str
    source: Source
    rows: int
    missing: int
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    quantiles: tuple[float, ...]  # at QUANTILE_LEVELS
    mean: float
    std: float
    minimum: float
    maximum: float
    sample: tuple[float, ...]

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` (finite floats) in this feature's bins."""
        return bin_counts(self.edges, values)


@dataclass(frozen=True)
class CategoricalReference:
    name: str
    source: Source
    rows: int
    missing: int
    counts: dict[str, int]  # sorted by category
    sample: tuple[str, ...]

    def aligned_counts(self, current: dict[str, int]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """Categories of both sides (the reference's first, then unseen ones, sorted) and both count vectors."""
        unseen = sorted(set(current) - set(self.counts))
        categories = (*self.counts, *unseen)
        reference = np.array([self.counts.get(c, 0) for c in categories], dtype=np.int64)
        observed = np.array([current.get(c, 0) for c in categories], dtype=np.int64)
        return categories, reference, observed


@dataclass(frozen=True)
class ReferenceProfile:
    numeric: tuple[NumericReference, ...]
    categorical: tuple[CategoricalReference, ...]
    projection_features: tuple[str, ...]
    projection_sample: tuple[tuple[float, ...], ...]  # rows x len(projection_features)
    config: ReferenceConfig = field(default_factory=ReferenceConfig)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric) + tuple(f.name for f in self.categorical)

    @property
    def numeric_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric)

    @property
    def categorical_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.categorical)

    def numeric_feature(self, name: str) -> NumericReference:
        for feature in self.numeric:
            if feature.name == name:
                return feature
        raise KeyError(f"no numeric feature {name!r} in the reference; it has {list(self.numeric_features)}")

    def categorical_feature(self, name: str) -> CategoricalReference:
        for feature in self.categorical:
            if feature.name == name:
                return feature
        raise KeyError(f"no categorical feature {name!r} in the reference; it has {list(self.categorical_features)}")

    def projection_array(self) -> np.ndarray:
        return np.asarray(self.projection_sample, dtype=np.float64).reshape(-1, len(self.projection_features))

    def sample_frame(self) -> pd.DataFrame:
        """The samples as one frame, Evidently's reference: a column per feature (categorical as strings).

        Input and model features come from different row sets (training split, eval suite) and may differ in
        length; the shorter columns are padded with NaN / None, which Evidently drops per column.
        """
        import pandas as pd

        length = max([len(f.sample) for f in self.numeric] + [len(f.sample) for f in self.categorical], default=0)
        columns: dict[str, Any] = {}
        for num in self.numeric:
            columns[num.name] = np.concatenate([np.asarray(num.sample), np.full(length - len(num.sample), np.nan)])
        for cat in self.categorical:
            columns[cat.name] = pd.Series([*cat.sample, *([None] * (length - len(cat.sample)))], dtype="object")
        return pd.DataFrame(columns)

    # -- files -------------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": {
                "bins": self.config.bins,
                "sample_size": self.config.sample_size,
                "projection_sample_size": self.config.projection_sample_size,
                "seed": self.config.seed,
            },
            "quantile_levels": list(QUANTILE_LEVELS),
            "numeric": [
                {
                    "name": f.name, "source": f.source, "rows": f.rows, "missing": f.missing, "edges": list(f.edges),
                    "counts": list(f.counts), "quantiles": list(f.quantiles), "mean": f.mean, "std": f.std,
                    "minimum": f.minimum, "maximum": f.maximum, "sample": list(f.sample),
                }
                for f in self.numeric
            ],
            "categorical": [
                {"name": f.name, "source": f.source, "rows": f.rows, "missing": f.missing, "counts": dict(f.counts),
                 "sample": list(f.sample)}
                for f in self.categorical
            ],
            "projection_features": list(self.projection_features),
            "projection_sample": [list(row) for row in self.projection_sample],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReferenceProfile:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version: this code reads reference profiles of version {FORMAT_VERSION}, got {version!r}")
        if tuple(data["quantile_levels"]) != QUANTILE_LEVELS:
            raise ValueError(f"quantile_levels: expected {list(QUANTILE_LEVELS)}, got {data['quantile_levels']}")
        numeric = tuple(
            NumericReference(
                name=f["name"], source=f["source"], rows=int(f["rows"]), missing=int(f["missing"]),
                edges=tuple(float(v) for v in f["edges"]), counts=tuple(int(v) for v in f["counts"]),
                quantiles=tuple(float(v) for v in f["quantiles"]), mean=float(f["mean"]), std=float(f["std"]),
                minimum=float(f["minimum"]), maximum=float(f["maximum"]), sample=tuple(float(v) for v in f["sample"]),
            )
            for f in data["numeric"]
        )
        for f in numeric:
            if len(f.counts) != len(f.edges) + 1:
                raise ValueError(f"numeric feature {f.name!r}: {len(f.edges)} edges need {len(f.edges) + 1} counts, got {len(f.counts)}")
        categorical = tuple(
            CategoricalReference(
                name=f["name"], source=f["source"], rows=int(f["rows"]), missing=int(f["missing"]),
                counts={str(k): int(v) for k, v in sorted(f["counts"].items())}, sample=tuple(str(v) for v in f["sample"]),
            )
            for f in data["categorical"]
        )
        return cls(
            numeric=numeric,
            categorical=categorical,
            projection_features=tuple(data["projection_features"]),
            projection_sample=tuple(tuple(float(v) for v in row) for row in data["projection_sample"]),
            config=ReferenceConfig(**data["config"]),
        )

    def dumps(self) -> str:
        """Deterministic JSON text (sorted keys, shortest round-trip floats)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PROFILE_FILE
        path.write_text(self.dumps() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path) -> ReferenceProfile:
        path = directory / PROFILE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no reference profile at {path}; the bundle was exported without one")
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


# -- building ----------------------------------------------------------------------------------------------------


def bin_counts(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Counts per right-closed bin: bin i holds e_i < x <= e_(i+1), with e_0 = -inf and e_(k+1) = inf."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def bin_edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """Inner edges at the reference's 1/bins .. (bins-1)/bins quantiles, as values that occur (so no reference
    bin is empty), ties merged, and an edge at the maximum dropped (it would leave the last bin empty). A
    constant feature keeps two edges around its value: below, at, and above it are three bins."""
    levels = np.arange(1, bins) / bins
    edges = np.unique(np.quantile(values, levels, method="inverted_cdf"))
    edges = edges[edges < values.max()]
    if edges.size == 0:  # one distinct value (or all but the top decile tie at the maximum)
        top = float(values.max())
        return (float(np.nextafter(top, -np.inf)), top)
    return tuple(float(e) for e in edges)


def _numeric_reference(name: str, source: Source, column: pd.Series, rows: np.ndarray, config: ReferenceConfig) -> NumericReference:
    raw = column.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(raw)
    values = raw[finite]
    if values.size == 0:
        raise ValueError(f"{source}_frame[{name!r}]: no finite values; a reference needs at least one")
    edges = bin_edges(values, config.bins)
    return NumericReference(
        name=name, source=source, rows=int(values.size), missing=int(raw.size - values.size), edges=edges,
        counts=tuple(int(c) for c in bin_counts(edges, values)),
        quantiles=tuple(float(q) for q in np.quantile(values, QUANTILE_LEVELS)),
        mean=float(values.mean()), std=float(values.std()), minimum=float(values.min()), maximum=float(values.max()),
        sample=tuple(float(v) for v in raw[rows] if math.isfinite(v)),
    )


def category_label(value: object) -> str:
    """A category's name: booleans as "true" / "false" (the log's truncated column), anything else as str."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    return str(value)


def category_counts(values: object) -> tuple[dict[str, int], int]:
    """Counts per category (sorted) and the number of missing values (None, NaN), counted in C by pandas."""
    import pandas as pd

    series = values.astype(object) if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    missing = int(series.isna().sum())
    counts: dict[str, int] = {}
    for value, count in series.value_counts(dropna=True, sort=False).items():
        name = category_label(value)
        counts[name] = counts.get(name, 0) + int(count)  # True and "true" are one category
    return dict(sorted(counts.items())), missing


def _categorical_reference(name: str, source: Source, column: pd.Series, rows: np.ndarray) -> CategoricalReference:
    counts, missing = category_counts(column)
    if not counts:
        raise ValueError(f"{source}_frame[{name!r}]: every value is missing; a reference needs at least one")
    drawn = column.iloc[rows]
    return CategoricalReference(
        name=name, source=source, rows=int(sum(counts.values())), missing=missing, counts=counts,
        sample=tuple(category_label(v) for v in drawn[drawn.notna()]),
    )


def _projection_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    present = sorted((c for c in frame.columns if str(c).startswith("projection_")), key=lambda c: int(str(c)[11:]))
    expected = [f"projection_{i}" for i in range(len(present))]
    if [str(c) for c in present] != expected or not 1 <= len(present) <= MAX_PROJECTION_COMPONENTS:
        raise ValueError(
            f"model_frame: projection columns must be projection_0 .. projection_(K-1) with K in 1..{MAX_PROJECTION_COMPONENTS}, "
            f"got {[str(c) for c in present]}"
        )
    return tuple(expected)


def _require(frame_name: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{frame_name}: missing columns {missing}; it has {[str(c) for c in frame.columns]}")
    if len(frame) == 0:
        raise ValueError(f"{frame_name}: no rows")


def build_reference(
    input_frame: pd.DataFrame, model_frame: pd.DataFrame, config: ReferenceConfig | None = None
) -> ReferenceProfile:
    """The profile of one model version: input features from ``input_frame`` (the training split's
    text_chars, token_count, unknown_share, truncated), model features from ``model_frame`` (the eval suite's
    confidence, label, projection_0 .. projection_(K-1)). Rows with a missing value are counted and left out
    of that feature only."""
    config = config or ReferenceConfig()
    _require("input_frame", input_frame, (*INPUT_NUMERIC, *INPUT_CATEGORICAL))
    projection = _projection_columns(model_frame)
    _require("model_frame", model_frame, (*MODEL_NUMERIC, *MODEL_CATEGORICAL, *projection))
    rng = np.random.default_rng(config.seed)
    # one row draw per source, shared by its features: the sample frame's rows stay real rows of that source
    input_rows = np.sort(rng.choice(len(input_frame), min(len(input_frame), config.sample_size), replace=False))
    model_rows = np.sort(rng.choice(len(model_frame), min(len(model_frame), config.sample_size), replace=False))
    numeric = [
        *(_numeric_reference(n, "input", input_frame[n], input_rows, config) for n in INPUT_NUMERIC),
        *(_numeric_reference(n, "model", model_frame[n], model_rows, config) for n in (*MODEL_NUMERIC, *projection)),
    ]
    categorical = [
        *(_categorical_reference(n, "input", input_frame[n], input_rows) for n in INPUT_CATEGORICAL),
        *(_categorical_reference(n, "model", model_frame[n], model_rows) for n in MODEL_CATEGORICAL),
    ]
    points = model_frame[list(projection)].to_numpy(dtype=np.float64, na_value=np.nan)
    points = points[np.all(np.isfinite(points), axis=1)]
    if points.shape[0] < 2:
        raise ValueError(f"model_frame: {points.shape[0]} rows with a complete projection; the multivariate test needs 2 or more")
    chosen = np.sort(rng.choice(points.shape[0], min(points.shape[0], config.projection_sample_size), replace=False))
    return ReferenceProfile(
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        projection_features=projection,
        projection_sample=tuple(tuple(float(v) for v in row) for row in points[chosen]),
        config=config,
    )
