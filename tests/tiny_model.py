"""A tiny BERT encoder and WordPiece tokenizer built from words of the bundled data: no download needed."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tl_platform.data.bundled import BUNDLED_DIR, BUNDLED_DOMAINS

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(directory: Path, vocab_words: int = 600, layers: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer BERT and its tokenizer as a Hugging Face model directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    counts: Counter[str] = Counter()
    for name in BUNDLED_DOMAINS.values():
        for line in (BUNDLED_DIR / name).read_text(encoding="utf-8").splitlines():
            counts.update(re.findall(r"[a-z]+|[^\sa-z0-9]", line.split("\t")[0].lower()))
    vocab = SPECIAL_TOKENS + [w for w, _ in counts.most_common(vocab_words)]
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    return directory
