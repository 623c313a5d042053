"""Layer-wise learning-rate decay goes by transformer depth read from the parameter name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tl_platform.training.layerwise import layerwise_parameter_groups, parameter_depth


@pytest.mark.parametrize(
    ("name", "depth"),
    [
        ("bert.embeddings.word_embeddings.weight", 0),
        ("bert.encoder.layer.0.attention.self.query.weight", 1),
        ("bert.encoder.layer.5.output.dense.bias", 6),
        ("base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.default.weight", 3),
        ("transformer.h.11.attn.c_attn.weight", 12),
        ("model.layers.3.mlp.up_proj.weight", 4),
        ("classifier.weight", 13),
        ("bert.pooler.dense.weight", 13),
        ("base_model.model.classifier.modules_to_save.default.weight", 13),
    ],
)
def test_depth_comes_from_the_name(name: str, depth: int) -> None:
    assert parameter_depth(name, num_layers=12) == depth


def test_a_layer_beyond_the_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="names layer 12 but the model has 12 layers"):
        parameter_depth("encoder.layer.12.output.dense.weight", num_layers=12)


def test_rates_decay_from_head_to_embeddings(tiny_bert_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    groups, summary = layerwise_parameter_groups(model, num_layers=2, base_learning_rate=1e-3, decay=0.5, weight_decay=0.01)
    rates = {s.depth: s.learning_rate for s in summary}
    assert rates == {"head": 1e-3, "layer 1": 5e-4, "layer 0": 2.5e-4, "embeddings": 1.25e-4}
    # every trainable parameter is in exactly one group
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    # biases and LayerNorm weights get no weight decay
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in no_decay) == (name.endswith("bias") or "LayerNorm" in name), name


def test_not_by_tensor_index(tiny_bert_dir: Path) -> None:
    """Reordering parameters (as a wrapper might) changes nothing: depth is read from names."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    _, summary = layerwise_parameter_groups(model, 2, 1e-3, 0.9, 0.0)
    layer0 = sum(s.parameters for s in summary if s.depth == "layer 0")  # decayed and non-decayed groups
    assert layer0 == sum(p.numel() for n, p in model.named_parameters() if ".layer.0." in n)


def test_frozen_parameters_are_left_out() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        layerwise_parameter_groups(model, 1, 1e-3, 0.9, 0.0)
