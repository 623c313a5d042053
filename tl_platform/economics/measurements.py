"""What the transfer plan measures from the data: labelled examples per class and distance from general text.

Domain distance. MiniLM (the embedded default) ships without an MLM head, so the foundation model's perplexity
on target text cannot be read off without first training a head. The plan instead measures an embedding
distance: the cosine distance between the mean sentence embedding of the target texts and that of a
reference set of general-English text, with the same encoder. No general-English corpus with a licence that
allows bundling is in the project, so the reference is the bundled review domains (Amazon, Yelp, IMDb:
everyday English, the register of the Reddit, Q&A and review text MiniLM was trained on), and the distance is
made relative: the target's mean distance to each reference domain divided by the mean distance between two
reference domains. A domain that overlaps the target (a bundled domain used as the target) is left out of
the reference automatically.

A relative distance of 1.0 means "as far from general English reviews as one review domain is from another".
The threshold, ``DEFAULT_FAR_THRESHOLD = 1.4``, was calibrated with MiniLM on 300 sampled sentences per domain:
the bundled domains measured 0.85 (Yelp), 1.08 (Amazon) and 1.10 (IMDb) against the other two; legal text
(licence files of installed packages) measured about 1.70 and technical docstrings (NumPy, SciPy, pandas)
about 1.67 (once, during calibration; they are not bundled), and the 30 clinical notes written for tests/unit/test_decision.py 1.62 (its integration test pins both sides).
1.4 sits between the two groups. It is a judgement from few points, and only for MiniLM; the threshold is a
config field. Small samples overstate the distance (a noisier mean direction): 12 Amazon sentences measured
1.19 on average and at most 1.32 over 20 draws, against 1.08 for 300. Fewer than ``MIN_TARGET_TEXTS`` texts
are refused here; the plan then decides without a distance, which only its few-labels branch allows.

Token lengths. The plan counts each text's tokens with the foundation's own tokenizer (special tokens included,
uncut; a seeded sample of ``DEFAULT_MAX_TEXTS_FOR_LENGTHS`` beyond that many); ``training.long_text`` holds the
distribution, the model's window and the latency model the plan chooses ``max_length`` with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_platform.data.bundled import BUNDLED_DOMAINS, bundled_source
from tl_platform.data.loading import load_labelled_text
from tl_platform.models.embedding import embed_texts
from tl_platform.training.long_text import TokenLengths

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts to one vector per text, shape (len(texts), dim); the plan uses mean-pooled encoder embeddings."""

DEFAULT_FAR_THRESHOLD = 1.4
DEFAULT_MAX_TEXTS_PER_DOMAIN = 300
MIN_TARGET_TEXTS = 20
OVERLAP_EXCLUDES_REFERENCE = 0.5  # a reference domain holding half the target's texts is the target itself

TokenCounter = Callable[[Sequence[str]], Sequence[int]]
"""Texts to their token counts with the foundation's tokenizer (``training.long_text.count_tokens``)."""

DEFAULT_MAX_TEXTS_FOR_LENGTHS = 5000


@dataclass(frozen=True)
class LabelCounts:
    """Labelled examples in total and per class (class name to count)."""

    total: int
    per_class: dict[str, int]

    @property
    def smallest_class(self) -> int:
        return min(self.per_class.values()) if self.per_class else 0

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "per_class": dict(self.per_class), "smallest_class": self.smallest_class}


def count_labels(labels: Sequence[int], class_names: Sequence[str]) -> LabelCounts:
    """Count class indices; every class of the schema appears, with zero when it has no example."""
    per_class = dict.fromkeys(class_names, 0)
    for label in labels:
        if not 0 <= label < len(class_names):
            raise ValueError(f"label index {label} is outside the {len(class_names)} classes {list(class_names)}")
        per_class[class_names[label]] += 1
    return LabelCounts(total=len(labels), per_class=per_class)


@dataclass(frozen=True)
class DomainDistance:
    """The target's embedding distance from general-English reference text, relative to the reference's spread.

    Attributes:
        distance: mean cosine distance between the target's mean embedding and each reference domain's.
        calibration: mean cosine distance between the mean embeddings of two reference domains.
        relative: ``distance / calibration``; 1.0 is as far as one reference domain is from another.
        threshold: the relative distance at or above which the target counts as far.
        reference_domains: the domains the distance was measured against.
        excluded_domains: reference domains left out because they overlap the target.
        texts_per_domain: how many texts of each set were embedded (a seeded sample when there were more).
    """

    distance: float
    calibration: float
    relative: float
    threshold: float
    reference_domains: tuple[str, ...]
    excluded_domains: tuple[str, ...]
    texts_per_domain: dict[str, int]

    @property
    def far(self) -> bool:
        return self.relative >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "distance": self.distance,
            "calibration": self.calibration,
            "relative": self.relative,
            "threshold": self.threshold,
            "far": self.far,
            "reference_domains": list(self.reference_domains),
            "excluded_domains": list(self.excluded_domains),
            "texts_per_domain": dict(self.texts_per_domain),
        }


def centroid_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine similarity of the mean vectors of two sets of embeddings (rows)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"need two non-empty 2-D arrays of the same width, got shapes {a.shape} and {b.shape}")
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    norms = float(np.linalg.norm(ca) * np.linalg.norm(cb))
    if norms == 0.0:
        raise ValueError("a set of embeddings averages to the zero vector; its direction is undefined")
    return 1.0 - float(ca @ cb) / norms


def sample_texts(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """All texts when there are at most ``limit``, else a sample of ``limit`` fixed by ``seed`` and independent of
    the order the texts come in (the asset reads them split by split, ``tlp plan`` from the file)."""
    if limit < 1:
        raise ValueError(f"max_texts_per_domain must be >= 1, got {limit}")
    ordered = sorted(texts)
    if len(ordered) <= limit:
        return ordered
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:limit]
    return [ordered[i] for i in sorted(chosen)]


def measure_domain_distance(
    target_texts: Sequence[str],
    references: Mapping[str, Sequence[str]],
    embed: Embedder,
    threshold: float = DEFAULT_FAR_THRESHOLD,
    max_texts_per_domain: int = DEFAULT_MAX_TEXTS_PER_DOMAIN,
    seed: int = 0,
) -> DomainDistance:
    """Embed the target and each reference domain and compare their mean embeddings (see the module docstring).

    A reference domain that contains at least half of the target's texts is the target itself (or holds it)
    and is excluded; at least two reference domains must remain to calibrate against.
    """
    if threshold <= 0:
        raise ValueError(f"far_threshold must be > 0, got {threshold}")
    if len(target_texts) < MIN_TARGET_TEXTS:
        raise ValueError(
            f"the target has {len(target_texts)} texts; a domain distance needs at least {MIN_TARGET_TEXTS} "
            "(fewer overstate it)"
        )
    target_set = set(target_texts)
    excluded = tuple(
        sorted(
            name for name, texts in references.items()
            if len(target_set.intersection(texts)) >= OVERLAP_EXCLUDES_REFERENCE * len(target_set)
        )
    )
    kept = {name: texts for name, texts in references.items() if name not in excluded}
    if len(kept) < 2:
        raise ValueError(
            f"need at least 2 reference domains that do not overlap the target to calibrate the distance; "
            f"got {sorted(references)}, of which {list(excluded)} overlap the target"
        )
    target_sample = sample_texts(target_texts, max_texts_per_domain, seed)
    samples = {name: sample_texts(texts, max_texts_per_domain, seed) for name, texts in sorted(kept.items())}
    target_vectors = np.asarray(embed(target_sample), dtype=np.float64)
    vectors = {name: np.asarray(embed(texts), dtype=np.float64) for name, texts in samples.items()}
    distance = float(np.mean([centroid_cosine_distance(target_vectors, v) for v in vectors.values()]))
    calibration = float(
        np.mean([centroid_cosine_distance(vectors[a], vectors[b]) for a, b in combinations(sorted(vectors), 2)])
    )
    if calibration <= 0.0:
        raise ValueError("the reference domains are indistinguishable (zero distance); they cannot calibrate a scale")
    counts = {"target": len(target_sample), **{name: len(texts) for name, texts in samples.items()}}
    return DomainDistance(
        distance=distance,
        calibration=calibration,
        relative=distance / calibration,
        threshold=threshold,
        reference_domains=tuple(sorted(kept)),
        excluded_domains=excluded,
        texts_per_domain=counts,
    )


def bundled_reference_texts() -> dict[str, tuple[str, ...]]:
    """The general-English reference: the texts of each bundled review domain."""
    return {domain: load_labelled_text(bundled_source(domain)).texts for domain in sorted(BUNDLED_DOMAINS)}


def encoder_embedder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a pretrained encoder (``models.embedding``)."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        return embed_texts(model, tokenizer, texts, max_length)

    return embed


def measure_token_lengths(
    texts: Sequence[str], count: TokenCounter, max_texts: int = DEFAULT_MAX_TEXTS_FOR_LENGTHS, seed: int = 0
) -> TokenLengths:
    """Count the tokens of the texts (a seeded sample of ``max_texts`` when there are more)."""
    if not texts:
        raise ValueError("no texts to measure token lengths on")
    sample = sample_texts(texts, max_texts, seed)
    counts = [int(n) for n in count(sample)]
    if len(counts) != len(sample):
        raise ValueError(f"the token counter returned {len(counts)} counts for {len(sample)} texts")
    return TokenLengths(tuple(sorted(counts)), len(texts))
