"""What a trained classifier costs to run, measured the same way for any two: scores, weight bytes and latency.

Texts are cut as training cut them (``long_text.encode_texts`` with the run's truncation strategy). Latency is
of the PyTorch model on whatever device holds it, one text per request (tokenise, forward, argmax); two models
are timed taking turns on each text, so neither gains from warm caches nor loses to a busy moment.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_platform.evaluation.metrics import softmax
from tl_platform.training.long_text import TruncationStrategy, encode_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def weights_bytes(directory: Path) -> int:
    """Bytes of the weight files (safetensors) saved in ``directory``: what a deployment ships for the model."""
    files = sorted(directory.rglob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights under {directory}")
    return sum(f.stat().st_size for f in files)


def _batch(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
           truncation: TruncationStrategy) -> dict[str, Any]:
    """Texts cut as training cut them (``long_text.encode_texts``), padded into one batch of tensors."""
    return dict(tokenizer.pad(encode_texts(tokenizer, texts, max_length, truncation), return_tensors="pt"))


def predict_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
    truncation: TruncationStrategy, batch_size: int,
) -> np.ndarray:
    """Class probabilities of ``texts`` in order, in batches (padding masked, so batching does not change them)."""
    import torch

    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = _batch(tokenizer, texts[start:start + batch_size], max_length, truncation)
            rows.append(model(**batch).logits.double().numpy())
    return softmax(np.concatenate(rows))


def paired_latency_ms(
    models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
    truncation: TruncationStrategy, warmup: int,
) -> list[tuple[float, float]]:
    """Median and p95 milliseconds of one-text predictions (tokenise, forward, argmax) of each model, the same
    texts in the same order, the models taking turns on each text; ``warmup`` rounds run untimed first."""
    import torch

    if not texts:
        raise ValueError("the latency probe needs at least one text")
    timings: list[list[float]] = [[] for _ in models]
    rounds = [texts[i % len(texts)] for i in range(warmup)] + list(texts)
    with torch.inference_mode():
        for i, text in enumerate(rounds):
            for model, times in zip(models, timings, strict=True):
                began = time.perf_counter()
                int(model(**_batch(tokenizer, [text], max_length, truncation)).logits.argmax(dim=-1)[0])
                if i >= warmup:
                    times.append((time.perf_counter() - began) * 1000.0)
    return [(statistics.median(times), float(np.percentile(times, 95))) for times in timings]
