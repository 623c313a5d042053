"""Drift tests: one small pure function per test, each next to its default threshold.

Divergences (PSI, KL, Jensen-Shannon) take counts over the same bins or categories, reference first; they are
effect sizes and decide "drifted" by ``value >= threshold``. Hypothesis tests (Kolmogorov-Smirnov,
chi-squared, MMD) give a p-value; the monitor uses them as a gate beside an effect size, because over a day of
traffic every p-value is tiny and would call every change drift.

Empty bins: PSI and KL divide by a share, so an empty bin needs smoothing. The default is additive: every
bin of both histograms gets ``pseudo_count`` (0.5, Jeffreys' prior) before normalising, so a bin is never 0
and the shift it adds to a bin's share is ``0.5 / (rows + 0.5 * bins)``. ``smoothing="evidently"`` reproduces
Evidently 0.7's rule instead (an empty bin gets 1e-4 of the share, or a millionth of the smallest non-empty
share when that is at most 1e-4; nothing is renormalised), so the same counts give Evidently's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Smoothing = Literal["additive", "evidently"]
KSMethod = Literal["auto", "exact", "asymp"]

KL_THRESHOLD = 0.15  # the default; the simulation tests hold it to the 5% / 95% targets
PSI_THRESHOLD = 0.25  # the usual rule of thumb's "significant change" (0.1 to 0.25 is "moderate")
JS_THRESHOLD = 0.1  # Jensen-Shannon distance (natural log), Evidently's default
KS_P_VALUE = 0.01  # the gate beside KL/PSI on numeric features
CHI2_P_VALUE = 0.01  # the gate beside Jensen-Shannon on categorical features
# Squared MMD (RBF kernel, median-heuristic bandwidth). Measured on 4 unit-variance components, 300 rows a side:
# a mean shift of 0.4 sd in one of them gives a median of 0.011, 0.5 sd 0.016; with no shift the 99th percentile
# is 0.005.
MMD_THRESHOLD = 0.01
MMD_P_VALUE = 0.01
DEFAULT_PSEUDO_COUNT = 0.5
MMD_PERMUTATIONS = 200
# Rows per side: the kernel matrix is (2 x 300)^2. The threshold on squared MMD, not the p-value, limits what
# counts as drift, and at 300 rows a side every measured window at or above it had p < 0.01: more add cost only.
MMD_MAX_ROWS = 300


@dataclass(frozen=True)
class DriftScore:
    """One test's outcome. ``threshold`` applies to ``value`` for divergences (drift when ``value >= threshold``)
    and to ``p_value`` for hypothesis tests (drift when ``p_value < threshold``)."""

    test: str
    value: float
    threshold: float
    drifted: bool
    p_value: float | None = None


@dataclass(frozen=True)
class MMDScore:
    """Squared MMD with its permutation p-value, and what it was computed on."""

    value: float
    p_value: float
    bandwidth: float
    reference_rows: int
    current_rows: int
    permutations: int


# -- input checks ----------------------------------------------------------------------------------------------


def _counts(name: str, counts: object) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-d array of counts, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: counts must be finite, got NaN or infinity at bin {int(np.argmin(np.isfinite(array)))}")
    if np.any(array < 0):
        raise ValueError(f"{name}: counts must be >= 0, got {array.min():g} at bin {int(np.argmin(array))}")
    if array.sum() <= 0:
        raise ValueError(f"{name}: counts sum to 0; there is no distribution to compare")
    return array


def _pair(reference_counts: object, current_counts: object) -> tuple[np.ndarray, np.ndarray]:
    reference = _counts("reference_counts", reference_counts)
    current = _counts("current_counts", current_counts)
    if reference.shape != current.shape:
        raise ValueError(
            f"reference_counts and current_counts must have the same bins, got {reference.size} and {current.size}"
        )
    return reference, current


def _values(name: str, values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-d array of values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: {int(np.sum(~np.isfinite(array)))} values are NaN or infinite; drop them first")
    return array


def _shares(counts: np.ndarray, smoothing: Smoothing, pseudo_count: float) -> np.ndarray:
    if smoothing == "additive":
        if not pseudo_count > 0:
            raise ValueError(f"pseudo_count must be > 0 for additive smoothing, got {pseudo_count}")
        return (counts + pseudo_count) / (counts.sum() + pseudo_count * counts.size)
    if smoothing == "evidently":
        shares = counts / counts.sum()
        smallest = shares[shares > 0].min()
        shares[shares == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
        return shares
    raise ValueError(f"smoothing must be 'additive' or 'evidently', got {smoothing!r}")


# -- divergences on binned counts ------------------------------------------------------------------------------


def kl_divergence(
    reference_counts: object,
    current_counts: object,
    threshold: float = KL_THRESHOLD,
    smoothing: Smoothing = "additive",
    pseudo_count: float = DEFAULT_PSEUDO_COUNT,
) -> DriftScore:
    """KL(reference || current) in nats over smoothed shares: large when current lost mass the reference had.

    Same direction as ``scipy.stats.entropy(reference, current)`` and Evidently's ``kl_div``; the shares are
    renormalised after smoothing (as ``entropy`` does).
    """
    reference, current = _pair(reference_counts, current_counts)
    p = _shares(reference, smoothing, pseudo_count)
    q = _shares(current, smoothing, pseudo_count)
    p, q = p / p.sum(), q / q.sum()
    value = float(np.sum(p * np.log(p / q)))
    return DriftScore("kl", value, threshold, value >= threshold)


def psi(
    reference_counts: object,
    current_counts: object,
    threshold: float = PSI_THRESHOLD,
    smoothing: Smoothing = "additive",
    pseudo_count: float = DEFAULT_PSEUDO_COUNT,
) -> DriftScore:
    """Population stability index: sum of (current - reference) * ln(current / reference) over smoothed shares
    (symmetric; KL in both directions added)."""
    reference, current = _pair(reference_counts, current_counts)
    p = _shares(reference, smoothing, pseudo_count)
    q = _shares(current, smoothing, pseudo_count)
    value = float(np.sum((q - p) * np.log(q / p)))
    return DriftScore("psi", value, threshold, value >= threshold)


def jensen_shannon(reference_counts: object, current_counts: object, threshold: float = JS_THRESHOLD) -> DriftScore:
    """Jensen-Shannon distance (the square root of the divergence, natural log, so at most sqrt(ln 2) ~ 0.833).

    Needs no smoothing: each share is compared with the mixture, which is positive wherever either is.
    """
    reference, current = _pair(reference_counts, current_counts)
    p, q = reference / reference.sum(), current / current.sum()
    m = (p + q) / 2

    def _part(shares: np.ndarray) -> float:
        used = shares > 0  # 0 * log 0 = 0
        return float(np.sum(shares[used] * np.log(shares[used] / m[used])))

    value = float(np.sqrt(max((_part(p) + _part(q)) / 2, 0.0)))  # rounding can leave -1e-17
    return DriftScore("jensenshannon", value, threshold, value >= threshold)


# -- hypothesis tests ------------------------------------------------------------------------------------------


def ks_test(
    reference_sample: object, current: object, alpha: float = KS_P_VALUE, method: KSMethod = "auto"
) -> DriftScore:
    """Two-sample Kolmogorov-Smirnov (two-sided); ``value`` is the statistic D. ``method`` is SciPy's ("auto":
    exact while both samples have at most 10,000 values, which costs ~20 ms at 4,000 x 10,000).

    Ties (integer features) make it conservative: the p-value is then too large, never too small.
    """
    from scipy.stats import ks_2samp

    reference = _values("reference_sample", reference_sample)
    values = _values("current", current)
    result = ks_2samp(reference, values, method=method)
    p_value = float(result.pvalue)
    return DriftScore("ks", float(result.statistic), alpha, p_value < alpha, p_value)


def chi_squared(reference_counts: object, current_counts: object, alpha: float = CHI2_P_VALUE) -> DriftScore:
    """Chi-squared test of homogeneity on the 2 x k table (reference row, current row), no continuity correction.

    Both rows are samples, so a category absent from the reference still has a positive expected count; a
    category absent from both is left out. ``value`` is the statistic, with k - 1 degrees of freedom.
    """
    from scipy.stats import chi2

    reference, current = _pair(reference_counts, current_counts)
    seen = (reference + current) > 0
    table = np.vstack([reference[seen], current[seen]])
    if table.shape[1] < 2:  # one category: nothing can shift
        return DriftScore("chi2", 0.0, alpha, False, 1.0)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    p_value = float(chi2.sf(statistic, table.shape[1] - 1))
    return DriftScore("chi2", statistic, alpha, p_value < alpha, p_value)


def _mmd2_from_indicators(kernel: np.ndarray, in_reference: np.ndarray) -> np.ndarray:
    """Unbiased squared MMD for each row of ``in_reference`` (0/1 membership of the pooled points), all at once.

    With ``a`` the membership and ``r`` the kernel's row sums, the within-reference sum is ``a K a`` and the
    reference-to-all sum is ``a . r`` (each less the diagonal, k(x, x) = 1); the rest follows by subtraction,
    so the only heavy step is one (permutations x N) @ (N x N) product.
    """
    a = in_reference.astype(kernel.dtype)
    m = float(in_reference[0].sum())
    n = in_reference.shape[1] - m
    row_sums = kernel.sum(axis=1, dtype=np.float64)
    within_reference = np.einsum("pi,pi->p", a @ kernel, a, dtype=np.float64) - m
    cross = a.astype(np.float64) @ row_sums - m - within_reference
    within_current = (row_sums.sum() - (m + n)) - within_reference - 2 * cross
    return np.asarray(within_reference / (m * (m - 1)) + within_current / (n * (n - 1)) - 2 * cross / (m * n))


def mmd_test(
    reference: object,
    current: object,
    threshold: float = MMD_THRESHOLD,
    alpha: float = MMD_P_VALUE,
    permutations: int = MMD_PERMUTATIONS,
    max_rows: int = MMD_MAX_ROWS,
    seed: int = 0,
) -> tuple[DriftScore, MMDScore]:
    """Maximum mean discrepancy between two point sets (rows x K) with a permutation p-value.

    RBF kernel ``exp(-d^2 / (2 s^2))`` with ``s^2`` the median squared distance of the pooled points (the median
    heuristic); at most ``max_rows`` rows of each side, drawn with ``seed``, so the cost and the power are the
    same for a window of a thousand rows or of a million. Drift when the unbiased squared MMD is at least
    ``threshold`` and its p-value ``(1 + #{permuted >= observed}) / (1 + permutations)`` is below ``alpha``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    for name, points in (("reference", ref), ("current", cur)):
        if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] == 0:
            raise ValueError(f"{name}: expected at least 2 rows of points (rows x components), got shape {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError(f"{name}: points contain NaN or infinity; drop those rows first")
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} components and current {cur.shape[1]}; they must match")
    if permutations < 1 or max_rows < 2:
        raise ValueError(f"permutations must be >= 1 and max_rows >= 2, got {permutations} and {max_rows}")
    rng = np.random.default_rng(seed)
    if ref.shape[0] > max_rows:
        ref = ref[rng.choice(ref.shape[0], max_rows, replace=False)]
    if cur.shape[0] > max_rows:
        cur = cur[rng.choice(cur.shape[0], max_rows, replace=False)]
    from scipy.spatial.distance import pdist, squareform

    pooled = np.vstack([ref, cur])
    distances = pdist(pooled, "sqeuclidean")  # the pairs i < j
    bandwidth2 = float(np.median(distances))
    if bandwidth2 <= 0:  # more than half the pairs coincide: fall back to the mean, or call identical sets equal
        bandwidth2 = float(distances.mean())
    if bandwidth2 <= 0:
        score = MMDScore(0.0, 1.0, 0.0, ref.shape[0], cur.shape[0], permutations)
        return DriftScore("mmd", 0.0, threshold, False, 1.0), score
    kernel = squareform(np.exp(-distances / (2.0 * bandwidth2)))
    np.fill_diagonal(kernel, 1.0)
    members = np.arange(pooled.shape[0]) < ref.shape[0]
    observed = float(_mmd2_from_indicators(kernel, members[None, :])[0])
    # the null in float32 halves the permutation product's time; its sums still accumulate in float64
    shuffled = rng.permuted(np.tile(members, (permutations, 1)), axis=1)
    null = _mmd2_from_indicators(kernel.astype(np.float32), shuffled)
    p_value = float((1 + np.sum(null >= observed)) / (1 + permutations))
    score = MMDScore(observed, p_value, float(np.sqrt(bandwidth2)), ref.shape[0], cur.shape[0], permutations)
    return DriftScore("mmd", observed, threshold, observed >= threshold and p_value < alpha, p_value), score
