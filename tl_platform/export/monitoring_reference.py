"""The monitoring reference of an exported model: its features on known data, computed as the server computes them.

Each model version is judged against its own reference, stored in its bundle, so monitoring never re-reads
training data. Input features (length, tokens, unknown share, truncation) come from the training split: they
describe the text the model was built for. Model features (confidence, predicted class, embedding projection)
come from the held-out eval suite, scored by the graph that serves: on its own training texts a model is more
confident and its embeddings more separated than on any new text, so a training-split reference would call
unshifted traffic drifted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tl_platform.monitoring.features import EmbeddingProjection
from tl_platform.monitoring.reference import ReferenceConfig, ReferenceProfile, build_reference
from tl_platform.serving.config import DEFAULT_MAX_TEXT_CHARS
from tl_platform.serving.model import ServingTokenizer, softmax
from tl_platform.training.long_text import TruncationStrategy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REFERENCE_DIR = "reference"


def input_feature_frame(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    truncation: TruncationStrategy = "head",
) -> pd.DataFrame:
    """text_chars, token_count, unknown_share and truncated of each text, as the serving tokenizer logs them."""
    cut = [text[:max_text_chars] for text in texts]
    tokens = ServingTokenizer(tokenizer, max_length, truncation)(cut)
    return pd.DataFrame(
        {
            "text_chars": [token.chars for token in tokens],
            "token_count": [token.length for token in tokens],
            "unknown_share": [token.unknown_share for token in tokens],
            "truncated": [len(text) > max_text_chars for text in texts],
        }
    )


def model_feature_frame(
    logits: np.ndarray, embeddings: np.ndarray, labels: Sequence[str], projection: EmbeddingProjection
) -> pd.DataFrame:
    """confidence, predicted label and projection_0.. of each scored text, as the server logs them."""
    if logits.shape[0] != embeddings.shape[0] or logits.shape[1] != len(labels):
        raise ValueError(
            f"logits {logits.shape} and embeddings {embeddings.shape} must have one row per text and one column per "
            f"label ({len(labels)})"
        )
    probabilities = softmax(logits)
    projected = projection.transform(embeddings)
    frame = pd.DataFrame(
        {
            "confidence": probabilities.max(axis=1),
            "label": [labels[i] for i in probabilities.argmax(axis=1)],
        }
    )
    for component in range(projected.shape[1]):
        frame[f"projection_{component}"] = projected[:, component]
    return frame


def write_reference(
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str],
    max_length: int,
    eval_logits: np.ndarray,
    eval_embeddings: np.ndarray,
    labels: Sequence[str],
    projection: EmbeddingProjection,
    config: ReferenceConfig | None = None,
    truncation: TruncationStrategy = "head",
) -> ReferenceProfile:
    """Build the reference profile and save it under ``directory / REFERENCE_DIR``; input features from the text
    cut as the model serves it (``truncation``)."""
    profile = build_reference(
        input_feature_frame(tokenizer, train_texts, max_length, truncation=truncation),
        model_feature_frame(eval_logits, eval_embeddings, labels, projection),
        config or ReferenceConfig(),
    )
    profile.save(directory / REFERENCE_DIR)
    return profile


def load_reference(bundle: Path) -> ReferenceProfile:
    """The reference profile stored in an exported bundle; a bundle exported before monitoring existed has none."""
    location = bundle / REFERENCE_DIR
    if not location.is_dir():
        raise FileNotFoundError(
            f"{bundle} has no {REFERENCE_DIR}/ (monitoring reference); it was exported before drift monitoring "
            "existed: re-materialise exported_model for this model"
        )
    return ReferenceProfile.load(location)
