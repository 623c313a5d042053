"""Tokenised text as a torch Dataset, padded per batch by the collator rather than to a fixed length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from tl_platform.training.long_text import TruncationStrategy, encode_chunks, encode_texts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenizedTexts(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Texts tokenised once up front, cut to ``max_length`` by ``truncation``; labels are attached when given.

    ``truncation`` is ``long_text.encode_texts``'s strategy (``head`` or ``head_tail``); export and serving cut
    text the same way (``export.runtime.encode``, ``serving.model.ServingTokenizer``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_length: int,
        labels: Sequence[int] | None = None,
        truncation: TruncationStrategy = "head",
    ) -> None:
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        encoded = encode_texts(tokenizer, texts, max_length, truncation)
        self.input_ids: list[list[int]] = encoded["input_ids"]
        self.attention_mask: list[list[int]] = encoded["attention_mask"]
        self.labels = list(labels) if labels is not None else None

    @classmethod
    def chunked(cls, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> TokenizedTexts:
        """Every token of every text in windows of ``max_length`` (``long_text.encode_chunks``); no labels."""
        dataset = cls.__new__(cls)
        encoded = encode_chunks(tokenizer, texts, max_length)
        dataset.input_ids, dataset.attention_mask, dataset.labels = encoded["input_ids"], encoded["attention_mask"], None
        return dataset

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        item: dict[str, object] = {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item  # type: ignore[return-value]
