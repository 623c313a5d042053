"""Run an exported classifier with ONNX Runtime: the same tokenizer as training, logits and embeddings out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tl_platform.training.long_text import TruncationStrategy, encode_texts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    """Token ids of a batch, padded to its longest member (callers bucket by length to keep padding low)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    unknown_share: np.ndarray  # per text: share of its tokens that are the unknown token
    lengths: np.ndarray  # per text: tokens, special tokens included


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, truncation: TruncationStrategy = "head"
) -> Encoded:
    """Tokenise exactly as training does: the same tokenizer files, cut to ``max_length`` by the same strategy
    (``training.long_text.encode_texts``; the task bundle records which), padded to the longest text."""
    if truncation == "head":
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        ids = batch["input_ids"].astype(np.int64)
        mask = batch["attention_mask"].astype(np.int64)
    else:
        cut = encode_texts(tokenizer, texts, max_length, truncation)["input_ids"]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids, mask = pad_ids(cut, int(pad_id), str(getattr(tokenizer, "padding_side", "right")))
    lengths = mask.sum(axis=1)
    unknown = ((ids == tokenizer.unk_token_id) & (mask == 1)).sum(axis=1) / np.maximum(lengths, 1)
    return Encoded(ids, mask, unknown.astype(np.float64), lengths)


def pad_ids(token_ids: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of sequences padded to the longest, as the tokenizer pads them."""
    if not token_ids:
        raise ValueError("padding needs at least one sequence")
    width = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = ids
        mask[row, span] = 1
    return input_ids, mask


class OnnxClassifier:
    """One ONNX Runtime session of an exported classifier; thread-safe for concurrent ``run`` calls."""

    def __init__(self, path: Path, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, encoded: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """Return (logits, embeddings) for an encoded batch."""
        logits, embedding = self.session.run(
            None, {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
        )
        return np.asarray(logits), np.asarray(embedding)
