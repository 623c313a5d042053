"""Layer-wise learning-rate decay by transformer depth, as AdamW parameter groups.

The depth of a parameter comes from its name (``encoder.layer.3.``), not from its position in
``named_parameters()``: the head gets the base rate, layer L-1 gets base * decay, layer 0 base * decay**L, and
embeddings base * decay**(L+1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# "layer.3." (BERT), "layers.3." (many decoders), "h.3." (GPT-2), "block.3." (T5)
_LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layer|layers|h|block)\.(\d+)\.")
_EMBEDDING_PATTERN = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|wte|wpe|shared)(?:\.|$)")
_NO_DECAY_PATTERN = re.compile(r"(?:bias$|LayerNorm\.weight$|layer_norm\.weight$|norm\.weight$|ln_\w+\.weight$)")


@dataclass(frozen=True)
class ParameterGroupSummary:
    depth: str  # "head", "layer 3", "embeddings"
    learning_rate: float
    weight_decay: float
    parameters: int


def parameter_depth(name: str, num_layers: int) -> int:
    """Depth index: num_layers + 1 for the head, i + 1 for transformer layer i, 0 for embeddings."""
    match = _LAYER_PATTERN.search(name)
    if match is not None:
        index = int(match.group(1))
        if index >= num_layers:
            raise ValueError(f"parameter {name!r} names layer {index} but the model has {num_layers} layers")
        return index + 1
    if _EMBEDDING_PATTERN.search(name):
        return 0
    return num_layers + 1


def layerwise_parameter_groups(
    model: torch.nn.Module,
    num_layers: int,
    base_learning_rate: float,
    decay: float,
    weight_decay: float,
) -> tuple[list[dict[str, Any]], list[ParameterGroupSummary]]:
    """Group the trainable parameters by (depth, decays?) with learning rate base * decay ** (head - depth)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    head = num_layers + 1
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (parameter_depth(name, num_layers), not _NO_DECAY_PATTERN.search(name))
        groups.setdefault(key, []).append(parameter)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    param_groups: list[dict[str, Any]] = []
    summaries: list[ParameterGroupSummary] = []
    for (depth, decays), params in sorted(groups.items(), reverse=True):
        rate = base_learning_rate * decay ** (head - depth)
        wd = weight_decay if decays else 0.0
        param_groups.append({"params": params, "lr": rate, "weight_decay": wd})
        label = "head" if depth == head else ("embeddings" if depth == 0 else f"layer {depth - 1}")
        summaries.append(ParameterGroupSummary(label, rate, wd, sum(p.numel() for p in params)))
    return param_groups, summaries
