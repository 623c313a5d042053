"""What a retrain trains with when its config leaves the recipe alone: from live, a lower rate and more patience."""

from __future__ import annotations

import dataclasses

import pytest

from assets.retraining import RetrainedModelConfig
from tl_platform.training.config import FineTuneConfig

RECIPE = {field.name: getattr(FineTuneConfig(), field.name) for field in dataclasses.fields(FineTuneConfig)}
RECIPE["lora_target_modules"] = list(RECIPE["lora_target_modules"])  # as provenance JSON stores it


def test_from_live_the_rate_is_scaled_down_and_patience_raised() -> None:
    settings = RetrainedModelConfig().fine_tune(RECIPE)
    assert settings.learning_rate == pytest.approx(0.3 * FineTuneConfig().base_learning_rate)
    assert settings.early_stopping_patience == 4
    assert settings.method == FineTuneConfig().method and settings.seed == 0


def test_from_the_foundation_or_when_set_the_recipe_or_the_config_wins() -> None:
    from_foundation = RetrainedModelConfig(start_from="foundation").fine_tune(RECIPE)
    assert from_foundation.learning_rate is None
    assert from_foundation.early_stopping_patience == FineTuneConfig().early_stopping_patience
    explicit = RetrainedModelConfig(learning_rate=5e-4, early_stopping_patience=1, epochs=3).fine_tune(RECIPE)
    assert (explicit.learning_rate, explicit.early_stopping_patience, explicit.epochs) == (5e-4, 1, 3)
    with pytest.raises(ValueError, match="start_from must be 'live' or 'foundation', got 'scratch'"):
        RetrainedModelConfig(start_from="scratch").fine_tune(RECIPE)
