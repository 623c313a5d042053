"""The real MiniLM, fine-tuned on a few hundred sentences of one bundled domain, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_platform.data import DatasetSplits, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.classifier import fine_tune_classifier
from tl_platform.training.config import FineTuneConfig

pytestmark = pytest.mark.integration


def test_minilm_lora_on_300_yelp_sentences_beats_080(tmp_path: Path) -> None:
    full = stratified_split(load_labelled_text(bundled_source("yelp")), SplitFractions(), seed=11)
    splits = DatasetSplits(full.train.subset(range(300)), full.validation, full.test, seed=11)
    model_dir = resolve_source(FoundationSource())
    tokenizer = load_tokenizer(model_dir)
    config = FineTuneConfig(method="lora", epochs=4, early_stopping_patience=2, seed=11)
    result = fine_tune_classifier(model_dir, tokenizer, splits, config, tmp_path, NullTracker())
    assert result.test_report.n == len(full.test) == 199
    assert result.test_report.accuracy > 0.80, result.test_report.summary()
    assert result.test_report.ece < 0.2
