"""Tokenised text as a torch Dataset, padded per batch by the collator rather than to a fixed length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenizedTexts(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Texts tokenised once up front; labels are attached when given."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_length: int,
        labels: Sequence[int] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.input_ids: list[list[int]] = encoded["input_ids"]
        self.attention_mask: list[list[int]] = encoded["attention_mask"]
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        item: dict[str, object] = {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item  # type: ignore[return-value]
