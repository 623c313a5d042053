"""The stated compute model for the alternatives: training FLOPs ~ 6 x parameters x tokens, at an achieved utilisation.

Forward and backward passes of a dense transformer cost about 2 and 4 FLOPs per parameter per token, hence 6
for training every weight (Kaplan et al. 2020). LoRA freezes the base: the backward pass still propagates
activation gradients through it (about 2) but computes no weight gradients for it, so about 4 per parameter
per token (the adapters' own weights are a rounding error). Device hours are FLOPs divided by the device's
peak dense throughput times the achieved utilisation (model FLOPs utilisation).

The defaults size a 7B model on A100s at 40 % utilisation and reproduce the usual reference figures within a
factor of 2 (pinned in tests/unit/test_costs.py):

| recipe | tokens (default) | FLOPs/param/token | A100-hours | reference |
| --- | --- | --- | --- | --- |
| from scratch | 2 T (Llama-2 scale) | 6 | 186,966 | ~180,000 |
| continued pretraining | 100 B | 6 | 9,348 | ~12,000 |
| full fine-tune | 2 B x 4 epochs | 6 | 748 | ~800 |
| LoRA | 200 M x 3 epochs | 4 | 37.4 | ~40 |

The recipes do not see the same number of tokens: the reference figures reflect what each recipe typically
consumes (full fine-tuning on a large supervised corpus, LoRA on a task set ten times smaller). On the same
data, LoRA saves a third of full fine-tuning's FLOPs, not 95 %; ``same_data_lora_hours`` reports that too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tl_platform.economics.costs import PriceTable, require_fraction, require_positive

FULL_TRAINING_FLOPS_PER_PARAMETER_TOKEN = 6.0
FROZEN_BASE_FLOPS_PER_PARAMETER_TOKEN = 4.0
A100_BF16_DENSE_PEAK_FLOPS = 312e12
SECONDS_PER_HOUR = 3600.0


def training_flops(parameters: float, tokens: float, flops_per_parameter_token: float = 6.0) -> float:
    """FLOPs to train on ``tokens`` tokens: ``flops_per_parameter_token`` x parameters x tokens."""
    require_positive("training_flops", "parameters", parameters)
    require_positive("training_flops", "tokens", tokens)
    return flops_per_parameter_token * parameters * tokens


def device_hours(flops: float, peak_flops_per_device: float, utilisation: float) -> float:
    """Hours of one device running at ``utilisation`` of its peak to do ``flops``."""
    require_positive("device_hours", "peak_flops_per_device", peak_flops_per_device)
    require_fraction("device_hours", "utilisation", utilisation)
    return flops / (peak_flops_per_device * utilisation * SECONDS_PER_HOUR)


@dataclass(frozen=True)
class ComputeModel:
    """Inputs of the estimate for the alternatives; every field is an assumption and shown as one.

    Attributes:
        parameters: model size N.
        pretraining_tokens: tokens of a from-scratch pretraining run.
        continued_pretraining_tokens: in-domain tokens of continued (domain-adaptive) pretraining.
        fine_tune_tokens: tokens of the supervised data for full fine-tuning, per epoch.
        fine_tune_epochs: passes over it.
        lora_tokens: tokens of the supervised data for LoRA, per epoch.
        lora_epochs: passes over it.
        lora_flops_per_parameter_token: 4 with a frozen base (see the module docstring).
        device: the device the hours are counted in (a key of the price table).
        peak_flops_per_device: its peak dense throughput (A100 BF16: 312 TFLOP/s).
        utilisation: achieved fraction of that peak, in (0, 1].
    """

    parameters: float = 7e9
    pretraining_tokens: float = 2e12
    continued_pretraining_tokens: float = 1e11
    fine_tune_tokens: float = 2e9
    fine_tune_epochs: float = 4.0
    lora_tokens: float = 2e8
    lora_epochs: float = 3.0
    lora_flops_per_parameter_token: float = FROZEN_BASE_FLOPS_PER_PARAMETER_TOKEN
    device: str = "a100"
    peak_flops_per_device: float = A100_BF16_DENSE_PEAK_FLOPS
    utilisation: float = 0.40

    def __post_init__(self) -> None:
        for field in (
            "parameters", "pretraining_tokens", "continued_pretraining_tokens", "fine_tune_tokens",
            "fine_tune_epochs", "lora_tokens", "lora_epochs", "lora_flops_per_parameter_token",
            "peak_flops_per_device",
        ):
            require_positive("ComputeModel", field, getattr(self, field))
        require_fraction("ComputeModel", "utilisation", self.utilisation)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AlternativeCost:
    """The estimated one-off training cost of one recipe at the compute model's size."""

    recipe: str
    label: str
    tokens: float
    flops_per_parameter_token: float
    flops: float
    device_hours: float
    cost_usd: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate_alternatives(model: ComputeModel, prices: PriceTable) -> tuple[AlternativeCost, ...]:
    """From scratch, continued pretraining, full fine-tuning and LoRA, in device hours and dollars."""
    full = FULL_TRAINING_FLOPS_PER_PARAMETER_TOKEN
    rows = (
        ("from_scratch", "pretraining from scratch", model.pretraining_tokens, full),
        ("continued_pretraining", "continued (domain-adaptive) pretraining", model.continued_pretraining_tokens, full),
        ("full_fine_tune", "full fine-tune", model.fine_tune_tokens * model.fine_tune_epochs, full),
        ("lora", "LoRA fine-tune", model.lora_tokens * model.lora_epochs, model.lora_flops_per_parameter_token),
    )
    price = prices.per_device_hour(model.device)
    estimates = []
    for recipe, label, tokens, per_token in rows:
        flops = training_flops(model.parameters, tokens, per_token)
        hours = device_hours(flops, model.peak_flops_per_device, model.utilisation)
        estimates.append(AlternativeCost(recipe, label, tokens, per_token, flops, hours, hours * price))
    return tuple(estimates)


def same_data_lora_hours(model: ComputeModel) -> float:
    """LoRA on the full fine-tune's data: what the frozen base alone saves."""
    flops = training_flops(
        model.parameters, model.fine_tune_tokens * model.fine_tune_epochs, model.lora_flops_per_parameter_token
    )
    return device_hours(flops, model.peak_flops_per_device, model.utilisation)
