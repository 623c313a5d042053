"""The gates an exported model passes before it may serve: parity, quantisation agreement, batch independence,
latency.

Each gate returns a frozen report carrying its numbers, so a failed gate says by how much it failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tl_platform.export.runtime import Encoded, encode
from tl_platform.training.long_text import TruncationStrategy


@dataclass(frozen=True)
class ParityReport:
    """ONNX FP32 logits against PyTorch logits on the same token ids."""

    max_abs_logit_diff: float
    tolerance: float
    examples: int

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class QuantisationReport:
    """INT8 predictions against FP32 on the eval suite: label agreement and accuracy in points.

    ``int8_only_correct`` and ``fp32_only_correct`` count the texts exactly one of the two got right (the
    discordant pairs); ``mcnemar_p`` is McNemar's exact two-sided test on them: whether the accuracy difference
    is distinguishable from chance at this eval-suite size (one text is 100/examples points).
    """

    label_agreement: float
    fp32_accuracy: float
    int8_accuracy: float
    min_agreement: float
    max_accuracy_drop_points: float
    examples: int
    int8_only_correct: int
    fp32_only_correct: int
    mcnemar_p: float

    @property
    def accuracy_drop_points(self) -> float:
        # rounded so that exactly one point lost in 100 compares equal to a 1.0-point budget
        return round(100.0 * (self.fp32_accuracy - self.int8_accuracy), 9)

    @property
    def passed(self) -> bool:
        return self.label_agreement >= self.min_agreement and self.accuracy_drop_points <= self.max_accuracy_drop_points

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "accuracy_drop_points": self.accuracy_drop_points, "passed": self.passed}


@dataclass(frozen=True)
class LatencyReport:
    """Single-request latency, tokenisation included, over ``requests`` timed calls after a warm-up."""

    p50_ms: float
    p99_ms: float
    budget_p99_ms: float
    requests: int
    threads: int
    precision: str = "int8"  # the graph timed: the one that serves

    @property
    def passed(self) -> bool:
        return self.p99_ms <= self.budget_p99_ms

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class BatchIndependenceReport:
    """Whether a graph gives each text the same answer alone as inside batches of other texts.

    Every eval text is scored alone, then inside shuffled batches of each size in ``batch_sizes`` (companions of
    other lengths, so its padding differs too). ``changed_labels`` counts the texts whose label differed in some
    batch, ``changed_texts`` those whose probabilities moved by more than ``tolerance``; ``max_abs_prob_diff`` is
    the largest move of any class probability. Passing needs no changed label and no move above the tolerance:
    in an A/B test or an audit, the same text must get the same answer whoever else was in its batch.
    """

    precision: str
    examples: int
    batch_sizes: tuple[int, ...]
    changed_labels: int
    changed_texts: int
    max_abs_prob_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.changed_labels == 0 and self.max_abs_prob_diff <= self.tolerance

    def shortfall(self) -> str:
        """What broke the rule, with the figures; empty when it passed."""
        if self.passed:
            return ""
        return (
            f"{self.precision.upper()} answers depend on the batch: {self.changed_labels} of {self.examples} texts "
            f"changed label and {self.changed_texts} moved a probability by more than {self.tolerance:g} (up to "
            f"{self.max_abs_prob_diff:.2g}) in shuffled batches of {'/'.join(map(str, self.batch_sizes))}"
        )

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes), "passed": self.passed}


RunBatch = Callable[[Encoded], tuple[np.ndarray, np.ndarray]]  # token ids -> (logits, sentence embeddings)
BATCH_INDEPENDENCE_SIZES = (8, 32)
BATCH_INDEPENDENCE_TOLERANCE = 1e-4  # probabilities; FP32 and per-token INT8 move 0 on the fine-tuned MiniLM


def batched_outputs(
    run: RunBatch, tokenizer: object, texts: Sequence[str], max_length: int, batch_size: int = 32,
    truncation: TruncationStrategy = "head",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings for every text, batched in length order (little padding), returned in input order;
    texts cut to ``max_length`` by ``truncation``, as training cut them."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    logits: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        chunk = [texts[i] for i in order[start : start + batch_size]]
        out_logits, out_embedding = run(encode(tokenizer, chunk, max_length, truncation))  # type: ignore[arg-type]
        logits.append(out_logits)
        embeddings.append(out_embedding)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return np.concatenate(logits)[inverse], np.concatenate(embeddings)[inverse]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def check_batch_independence(
    run: RunBatch,
    tokenizer: object,
    texts: Sequence[str],
    max_length: int,
    precision: str,
    tolerance: float = BATCH_INDEPENDENCE_TOLERANCE,
    batch_sizes: Sequence[int] = BATCH_INDEPENDENCE_SIZES,
    alone_logits: np.ndarray | None = None,
    seed: int = 0,
    truncation: TruncationStrategy = "head",
) -> BatchIndependenceReport:
    """Score every text alone and inside shuffled batches of each size; report the texts whose answer changed.

    ``alone_logits`` (one text per call, in ``texts`` order) saves scoring them again where the caller has them.
    """
    if not texts:
        raise ValueError("batch independence needs at least one text")
    if alone_logits is None:
        alone_logits, _ = batched_outputs(run, tokenizer, texts, max_length, batch_size=1, truncation=truncation)
    if alone_logits.shape[0] != len(texts):
        raise ValueError(f"alone_logits has {alone_logits.shape[0]} rows for {len(texts)} texts")
    alone = softmax(alone_logits)
    moved = np.zeros(len(texts))
    relabelled = np.zeros(len(texts), dtype=bool)
    rng = np.random.default_rng(seed)
    for size in batch_sizes:
        order = rng.permutation(len(texts))  # companions of every length: each text's padding differs from alone
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            logits, _ = run(encode(tokenizer, [texts[i] for i in rows], max_length, truncation))  # type: ignore[arg-type]
            probabilities = softmax(logits)
            moved[rows] = np.maximum(moved[rows], np.abs(probabilities - alone[rows]).max(axis=1))
            relabelled[rows] |= probabilities.argmax(axis=1) != alone[rows].argmax(axis=1)
    return BatchIndependenceReport(
        precision=precision,
        examples=len(texts),
        batch_sizes=tuple(batch_sizes),
        changed_labels=int(relabelled.sum()),
        changed_texts=int((moved > tolerance).sum()),
        max_abs_prob_diff=float(moved.max()),
        tolerance=tolerance,
    )


def check_parity(reference_logits: np.ndarray, onnx_logits: np.ndarray, tolerance: float) -> ParityReport:
    if reference_logits.shape != onnx_logits.shape:
        raise ValueError(f"logit shapes differ: reference {reference_logits.shape}, ONNX {onnx_logits.shape}")
    return ParityReport(float(np.abs(reference_logits - onnx_logits).max()), tolerance, int(reference_logits.shape[0]))


def check_quantisation(
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: Sequence[int],
    min_agreement: float,
    max_accuracy_drop_points: float,
) -> QuantisationReport:
    truth = np.asarray(labels)
    if fp32_logits.shape != int8_logits.shape or fp32_logits.shape[0] != truth.shape[0]:
        raise ValueError(
            f"shapes differ: FP32 logits {fp32_logits.shape}, INT8 logits {int8_logits.shape}, labels {truth.shape}"
        )
    fp32_right = fp32_logits.argmax(axis=1) == truth
    int8_right = int8_logits.argmax(axis=1) == truth
    int8_only, fp32_only = int(np.sum(int8_right & ~fp32_right)), int(np.sum(fp32_right & ~int8_right))
    return QuantisationReport(
        label_agreement=float((fp32_logits.argmax(axis=1) == int8_logits.argmax(axis=1)).mean()),
        fp32_accuracy=float(fp32_right.mean()),
        int8_accuracy=float(int8_right.mean()),
        min_agreement=min_agreement,
        max_accuracy_drop_points=max_accuracy_drop_points,
        examples=int(truth.shape[0]),
        int8_only_correct=int8_only,
        fp32_only_correct=fp32_only,
        mcnemar_p=mcnemar_exact_p(int8_only, fp32_only),
    )


def mcnemar_exact_p(candidate_only_correct: int, reference_only_correct: int) -> float:
    """McNemar's exact two-sided p-value from the discordant pairs of two classifiers on the same texts."""
    from scipy.stats import binomtest

    discordant = candidate_only_correct + reference_only_correct
    if discordant == 0:
        return 1.0
    return float(binomtest(candidate_only_correct, discordant, 0.5).pvalue)


def measure_latency(
    predict_one: Callable[[str], object],
    texts: Sequence[str],
    budget_p99_ms: float,
    threads: int,
    requests: int = 200,
    warmup: int = 20,
    precision: str = "int8",
) -> LatencyReport:
    """Time ``predict_one`` on one text at a time, cycling through ``texts``."""
    if not texts:
        raise ValueError("latency needs at least one text")
    for i in range(warmup):
        predict_one(texts[i % len(texts)])
    timings = np.empty(requests)
    for i in range(requests):
        started = time.perf_counter()
        predict_one(texts[i % len(texts)])
        timings[i] = (time.perf_counter() - started) * 1000.0
    return LatencyReport(
        p50_ms=float(np.percentile(timings, 50)),
        p99_ms=float(np.percentile(timings, 99)),
        budget_p99_ms=budget_p99_ms,
        requests=requests,
        threads=threads,
        precision=precision,
    )


def encoded_for_torch(encoded: Encoded) -> dict[str, object]:
    import torch

    return {"input_ids": torch.from_numpy(encoded.input_ids), "attention_mask": torch.from_numpy(encoded.attention_mask)}
