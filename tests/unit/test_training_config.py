"""Training configs: defaults, and a message naming the field and the allowed range for each bad value."""

from __future__ import annotations

import pytest

from tl_platform.training.config import DomainAdaptationConfig, FineTuneConfig


def test_default_rates_follow_the_method() -> None:
    assert FineTuneConfig(method="lora").base_learning_rate == 1e-3
    assert FineTuneConfig(method="full").base_learning_rate == 1e-4
    assert FineTuneConfig(method="full", learning_rate=3e-5).base_learning_rate == 3e-5
    assert FineTuneConfig().to_json()["lora_target_modules"] == ["query", "key", "value", "dense"]


FINE_TUNE_ERRORS = [
    ({"method": "adapter"}, "FineTuneConfig.method must be 'lora' or 'full', got 'adapter'"),
    ({"epochs": 0}, r"FineTuneConfig.epochs must be in \[1, 1000\], got 0"),
    ({"batch_size": 0}, r"FineTuneConfig.batch_size must be in \[1, 4096\], got 0"),
    ({"learning_rate": 2.0}, r"FineTuneConfig.learning_rate must be in \(0, 1\), got 2.0"),
    ({"layer_lr_decay": 1.5}, r"FineTuneConfig.layer_lr_decay must be in \(0, 1\], got 1.5"),
    ({"layer_lr_decay": 0.0}, r"FineTuneConfig.layer_lr_decay must be in \(0, 1\], got 0.0"),
    ({"weight_decay": -0.1}, r"FineTuneConfig.weight_decay must be in \[0, 1\), got -0.1"),
    ({"warmup_ratio": 1.0}, r"FineTuneConfig.warmup_ratio must be in \[0, 1\), got 1.0"),
    ({"early_stopping_patience": 0}, "FineTuneConfig.early_stopping_patience must be at least 1, got 0"),
    ({"max_length": 4}, r"FineTuneConfig.max_length must be in \[8, 8192\], got 4"),
    ({"lora_r": 0}, r"FineTuneConfig.lora_r must be in \[1, 1024\], got 0"),
    ({"lora_dropout": 1.0}, r"FineTuneConfig.lora_dropout must be in \[0, 1\), got 1.0"),
    ({"lora_target_modules": ()}, "FineTuneConfig.lora_target_modules must name at least one module"),
    ({"gradient_accumulation_steps": 0}, "FineTuneConfig.gradient_accumulation_steps must be at least 1"),
    ({"mixed_precision": "fp8"}, "FineTuneConfig.mixed_precision must be 'no', 'fp16' or 'bf16', got 'fp8'"),
    ({"truncation": "tail"}, r"FineTuneConfig.truncation must be one of \['head', 'head_tail'\], got 'tail'"),
    ({"truncation": "head_tail", "max_length": 31},
     (r"FineTuneConfig.truncation='head_tail' needs max_length >= 32 to hold a head and a tail, got 31; raise "
     r"max_length or use truncation='head'")),
]


@pytest.mark.parametrize(("kwargs", "message"), FINE_TUNE_ERRORS, ids=[next(iter(k)) + str(i) for i, (k, _) in enumerate(FINE_TUNE_ERRORS)])
def test_fine_tune_config_names_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**kwargs)  # type: ignore[arg-type]


def test_truncation_defaults_to_the_head_and_head_tail_starts_at_32_tokens() -> None:
    assert (FineTuneConfig().truncation, DomainAdaptationConfig().truncation) == ("head", "head")
    assert FineTuneConfig(truncation="head_tail", max_length=32).to_json()["truncation"] == "head_tail"
    assert FineTuneConfig(truncation="head", max_length=8).max_length == 8  # the head needs no room for a tail
    assert DomainAdaptationConfig(truncation="chunks", max_length=8).to_json()["truncation"] == "chunks"


def test_full_fine_tuning_does_not_need_lora_targets() -> None:
    assert FineTuneConfig(method="full", lora_target_modules=()).method == "full"


DOMAIN_ERRORS = [
    ({"epochs": 0}, r"DomainAdaptationConfig.epochs must be in \[1, 1000\], got 0"),
    ({"mlm_probability": 0.0}, r"DomainAdaptationConfig.mlm_probability must be in \(0, 1\), got 0.0"),
    ({"learning_rate": 0.0}, r"DomainAdaptationConfig.learning_rate must be in \(0, 1\), got 0.0"),
    ({"head_warmup_epochs": -1}, r"DomainAdaptationConfig.head_warmup_epochs must be in \[0, 100\], got -1"),
    ({"max_length": 100000}, r"DomainAdaptationConfig.max_length must be in \[8, 8192\], got 100000"),
    ({"warmup_ratio": -0.5}, r"DomainAdaptationConfig.warmup_ratio must be in \[0, 1\), got -0.5"),
    ({"truncation": "windows"}, r"DomainAdaptationConfig.truncation must be one of \['head', 'chunks'\], got 'windows'$"),
    ({"truncation": "head_tail"}, (r"DomainAdaptationConfig.truncation must be one of \['head', 'chunks'\], got "
                                  r"'head_tail' \(head_tail is fine-tuning's; for MLM, chunks trains on the whole text\)")),
]


@pytest.mark.parametrize(("kwargs", "message"), DOMAIN_ERRORS, ids=[next(iter(k)) for k, _ in DOMAIN_ERRORS])
def test_domain_adaptation_config_names_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DomainAdaptationConfig(**kwargs)  # type: ignore[arg-type]
