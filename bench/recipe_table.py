"""Recipe table: accuracy and training time of each recipe, at 64 tokens and at the length the plan chose.

Issue #14's last item. Four recipes on the packaged MiniLM-L6, each through the platform's own entry points:
LoRA and full fine-tuning (``training.classifier.fine_tune_classifier``, what the ``task_model`` asset runs), and
domain adaptation then LoRA (``training.domain_adaptation.adapt_to_domain``, what ``domain_adapted_model`` runs,
then the same LoRA fine-tune on the adapted encoder) without and with an unlabelled corpus. "Without" adapts on
the labelled training texts alone (labels unused); "with" adds a corpus read through ``data.corpus.load_corpus``
(written to a JSONL file first, de-duplicated and cleared of the validation and test texts, as the asset does).

Two columns of windows. 64 tokens with the platform's default configs (fine-tuning and adaptation keep the head).
The plan's length: ``economics.decision.plan_transfer`` with default ``PlanSettings`` (p95, multiple 16, floor
64, 500 ms latency SLA) on the training texts, counted with the MiniLM tokenizer, and the plan's strategies with
it (``LengthChoice.truncation`` for fine-tuning, ``mlm_texts`` for adaptation). When the plan chooses 64 the
second column is not run and the table says so.

Two datasets:

- ``long_documents``: the ``same_label`` documents of ``bench/long_documents.py`` (its builder, imported: each
  domain's reviews split 70/30 per label with seed ``--seed`` into a training and a test pool; a document joins
  reviews of one domain and one label up to 110-200 words). Training (``--train-docs`` 160, seed s), validation
  (``--validation-docs`` 32, seed s+2; early stopping and best-epoch choice only) and corpus documents
  (``--corpus-docs`` 320, seed s+3, labels dropped) come from the training pool; test documents (``--test-docs``
  240, seed s+1) from the test pool. Corpus documents are new combinations of training-pool reviews, not new
  sentences: the bundled data hold no more.
- ``amazon``: the bundled Amazon sentences in the labelled_data asset's standard split (70/10/20 stratified,
  seed 42: 693 / 99 / 198). Every Amazon sentence is in those splits, so the corpus is the 1,993 Yelp and IMDb
  sentences (labels dropped): review English, but not about phones, a near-domain corpus rather than an
  in-domain one.

Same budget in every cell: ``--epochs`` 3 of fine-tuning (batch 16, the configs' default learning rates, layer-wise
decay, early stopping patience 2, best validation-loss epoch restored), and for adaptation ``--head-warmup-epochs``
1 epoch fitting MiniLM's missing MLM head (the platform's default is 3; cut to fit the time budget) then
``--mlm-epochs`` 1 epoch of MLM at rate 1e-4; seed ``--seed`` 0 for documents, initialisation, dropout, data order
and masking. One torch thread. Times are wall-clock seconds of ``fine_tune_classifier`` (which includes the
per-epoch validation and checkpoints) and of ``adapt_to_domain`` (head fit, MLM epoch and three held-out perplexity
passes on the validation texts), with the process's CPU seconds beside them.

Measured with the defaults (seed 0) on a 2-core machine, under ``nice -n 19`` beside a CI-like test run and a
package install (load average 2 to 7.5), as two one-thread processes side by side (``--datasets amazon`` then
``--datasets long_documents --lengths 64``; ``--datasets long_documents --lengths plan``): 31 min 38 s wall,
29 min CPU. The plan chose 240 tokens for the documents (p95 271, capped by the latency SLA; 24% of the training
documents are longer) and 64 for the sentences (p95 31, under the floor), so the sentences have one row. Wall
seconds ran 1x to 3x the CPU seconds as the load came and went: read them as upper bounds, compare CPU seconds.
Accuracy, then CPU seconds of training (domain adaptation + fine-tuning where both):

| data, max_length (truncation) | LoRA | full | adapt + LoRA | adapt with corpus + LoRA |
|---|---|---|---|---|
| long documents, 64 (head) | 0.975 · 37 | 0.983 · 37 | 0.971 · 18 + 38 | 0.971 · 47 + 36 |
| long documents, 240 = plan (head_tail; chunks) | 1.000 · 182 | 1.000 · 144 | 1.000 · 100 + 158 | 0.996 · 265 + 160 |
| amazon sentences, 64 = plan (head) | 0.929 · 76 | 0.919 · 92 | 0.939 · 35 + 75 | 0.939 · 150 + 68 |

One standard error is about 1 point on 240 documents at 0.975 and 1.8 points on 198 sentences at 0.93. Every
difference between recipes at one length is within noise (at most 3 documents or 4 sentences). The plan's window
beats 64 tokens on the documents in all four recipes (+1.7 to +2.9 points, 1.5 to 3 standard errors each, as
``bench/long_documents.py`` found from 64 to 128) for 4-5x the fine-tuning CPU; at 240 tokens these documents are
at the ceiling, so that column cannot separate recipes. The corpus lowered held-out perplexity further (Amazon
validation 469 -> 183 with it, 533 -> 414 without; the head fit sees the corpus too) but moved no accuracy (one
document at 240 tokens), for 2.5-4.5x the adaptation time.

    nice -n 19 .venv/bin/python bench/recipe_table.py                       # everything, one process (about 30 min of CPU)
    nice -n 19 .venv/bin/python bench/recipe_table.py --datasets amazon     # the sentences only (about 8 min of CPU)
    nice -n 19 .venv/bin/python bench/recipe_table.py --datasets long_documents --lengths plan --json plan.json
    .venv/bin/python bench/recipe_table.py --table-from a.json,plan.json      # one table from runs saved with --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from long_documents import Document, build_documents, review_pools  # bench/long_documents.py, beside this file
from transformers import AutoConfig, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from tl_platform.data import (
    CorpusSource,
    DatasetSplits,
    LabelledDataset,
    SplitFractions,
    load_corpus,
    load_labelled_text,
    stratified_split,
)
from tl_platform.data.bundled import BUNDLED_DOMAINS, SENTIMENT_SCHEMA, bundled_source
from tl_platform.data.schema import DuplicateReport
from tl_platform.economics.decision import PlanSettings, plan_transfer
from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
from tl_platform.tracking.protocol import NullTracker
from tl_platform.training.classifier import fine_tune_classifier
from tl_platform.training.config import DomainAdaptationConfig, FineTuneConfig
from tl_platform.training.domain_adaptation import adapt_to_domain
from tl_platform.training.long_text import LengthChoice, MlmTextStrategy, TruncationStrategy, count_tokens, model_window

DATASETS = ("amazon", "long_documents")
RECIPES = ("lora", "full", "dapt_lora", "dapt_corpus_lora")
RECIPE_NAMES = {
    "lora": "LoRA",
    "full": "full fine-tune",
    "dapt_lora": "domain adaptation + LoRA, no corpus",
    "dapt_corpus_lora": "domain adaptation + LoRA, with corpus",
}
SENTENCE_DOMAIN = "amazon"
SPLIT_SEED = 42  # the labelled_data asset's default split


@dataclass(frozen=True)
class Dataset:
    name: str
    splits: DatasetSplits
    corpus: list[str]  # unlabelled texts offered to domain adaptation beside the labelled training texts
    corpus_note: str


@dataclass(frozen=True)
class Window:
    """One column of the table: a max_length with the truncation fine-tuning and domain adaptation use there."""

    label: str  # "64" or "plan"
    max_length: int
    truncation: TruncationStrategy
    mlm_texts: MlmTextStrategy


@dataclass
class Cell:
    dataset: str
    window: str
    max_length: int
    truncation: str
    recipe: str
    accuracy: float
    test_texts: int
    fine_tune_wall_s: float
    fine_tune_cpu_s: float
    adapt_wall_s: float = 0.0
    adapt_cpu_s: float = 0.0
    adapt_texts: int = 0
    perplexity_before: float = 0.0
    perplexity_after: float = 0.0


def labelled(texts: Sequence[str], labels: Sequence[int], source: str) -> LabelledDataset:
    return LabelledDataset(tuple(texts), tuple(labels), SENTIMENT_SCHEMA, source, len(texts), DuplicateReport(0, 0, 0))


def documents_dataset(args: argparse.Namespace) -> Dataset:
    """Long documents (``same_label``) from ``bench/long_documents.py``: training, validation and corpus documents
    from the training pool of reviews (different seeds), test documents from the test pool."""
    pools = review_pools(args.seed)

    def docs(pool: str, n: int, seed: int) -> list[Document]:
        return build_documents(pools, pool, n, "same_label", seed)

    train, test = docs("train", args.train_docs, args.seed), docs("test", args.test_docs, args.seed + 1)
    validation = docs("train", args.validation_docs, args.seed + 2)
    corpus = [d.text for d in docs("train", args.corpus_docs, args.seed + 3)]

    def split(part: list[Document], name: str) -> LabelledDataset:
        return labelled([d.text for d in part], [d.label for d in part], f"long documents ({name})")

    splits = DatasetSplits(split(train, "train"), split(validation, "validation"), split(test, "test"), seed=args.seed)
    note = (f"{len(corpus)} more same_label documents from the training pool of reviews (seed {args.seed + 3}), "
            "labels dropped")
    return Dataset("long_documents", splits, corpus, note)


def sentences_dataset() -> Dataset:
    """The bundled Amazon sentences in the labelled_data asset's standard splits (70/10/20, seed 42). Every Amazon
    sentence is in those splits, so the corpus is the other two bundled domains' sentences, labels dropped."""
    splits = stratified_split(load_labelled_text(bundled_source(SENTENCE_DOMAIN)), SplitFractions(), seed=SPLIT_SEED)
    others = sorted(set(BUNDLED_DOMAINS) - {SENTENCE_DOMAIN})
    corpus = [text for domain in others for text in load_labelled_text(bundled_source(domain)).texts]
    note = f"the {len(corpus)} {' and '.join(others)} sentences, labels dropped (review text, but not of phones)"
    return Dataset(SENTENCE_DOMAIN, splits, corpus, note)


def planned_length(model_dir: str, tokenizer: PreTrainedTokenizerBase, splits: DatasetSplits) -> LengthChoice:
    """The plan's own choice (``economics.decision.plan_transfer`` with default ``PlanSettings``) on the training
    texts. No encoder is passed, so the plan's recipe branch is meaningless here; only its length is read."""
    train = splits.train
    plan = plan_transfer(
        texts=train.texts, labels=train.labels, class_names=SENTIMENT_SCHEMA.names, unlabelled_texts=0, references={},
        embed=None, pretrained_model=None, settings=PlanSettings(),
        count_tokens=lambda texts: count_tokens(tokenizer, texts),
        window=model_window(tokenizer, AutoConfig.from_pretrained(model_dir, local_files_only=True)),
    )
    if plan.length is None:
        raise RuntimeError("the plan chose no max_length")
    return plan.length


class Clock:
    """Wall and CPU seconds (this process) of the ``with`` block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_cells(dataset: Dataset, window: Window, recipes: Sequence[str], model_dir: str,
              tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace, work: Path) -> list[Cell]:
    splits = dataset.splits
    cells: list[Cell] = []
    tracker = NullTracker()
    for recipe in recipes:
        seed_everything(args.seed)
        encoder_dir = model_dir
        adapt: tuple[float, float, int, float, float] = (0.0, 0.0, 0, 0.0, 0.0)
        if recipe.startswith("dapt"):
            texts = list(splits.train.texts)
            if recipe == "dapt_corpus_lora":  # through the platform's corpus reader, as the domain_adapted asset does
                path = work / f"{dataset.name}_corpus.jsonl"
                path.write_text("".join(json.dumps({"text": t}) + "\n" for t in dataset.corpus), encoding="utf-8")
                corpus = load_corpus(CorpusSource(str(path)), heldout_texts=splits.validation.texts + splits.test.texts,
                                     training_texts=splits.train.texts)
                texts += corpus.texts
            config = DomainAdaptationConfig(epochs=args.mlm_epochs, max_length=window.max_length,
                                            truncation=window.mlm_texts, head_warmup_epochs=args.head_warmup_epochs,
                                            seed=args.seed)
            with Clock() as clock:
                adapted = adapt_to_domain(model_dir, tokenizer, texts, splits.validation.texts, config,
                                          work / f"{recipe}_mlm", tracker)
            encoder_dir = str(work / f"{recipe}_encoder")
            adapted.encoder.save_pretrained(encoder_dir)
            adapt = (clock.wall, clock.cpu, len(texts), adapted.perplexity_before, adapted.perplexity_after)
        config_ft = FineTuneConfig(method="full" if recipe == "full" else "lora", epochs=args.epochs, max_length=window.max_length,
                                   truncation=window.truncation, seed=args.seed)
        with Clock() as clock:
            result = fine_tune_classifier(encoder_dir, tokenizer, splits, config_ft, work / f"{recipe}_ft", tracker)
        wall, cpu = clock.wall, clock.cpu
        cell = Cell(dataset.name, window.label, window.max_length, window.truncation, recipe,
                    result.test_report.accuracy, result.test_report.n, wall, cpu, *adapt)
        cells.append(cell)
        print(f"  {recipe:<17} acc {cell.accuracy:.4f}  fine-tune {wall:6.0f} s wall {cpu:6.0f} s cpu"
              + (f"  adapt {adapt[0]:6.0f} s wall {adapt[1]:6.0f} s cpu on {adapt[2]} texts, perplexity "
                 f"{adapt[3]:.1f} -> {adapt[4]:.1f}" if recipe.startswith("dapt") else ""), flush=True)
    return cells


def markdown(cells: Sequence[Cell], skipped: Sequence[str]) -> str:
    """One row per dataset and window, one column per recipe: accuracy, then training seconds (wall, then CPU;
    domain adaptation + fine-tuning where there are both)."""
    recipes = [r for r in RECIPES if any(c.recipe == r for c in cells)]
    rows = ["| data, max_length (truncation) | " + " | ".join(RECIPE_NAMES[r] for r in recipes) + " |",
            "|---|" + "---|" * len(recipes)]
    keys = list(dict.fromkeys((c.dataset, c.window) for c in cells))
    for dataset, window in keys:
        found = {c.recipe: c for c in cells if (c.dataset, c.window) == (dataset, window)}
        first = next(iter(found.values()))
        truncation = first.truncation + (" / chunks" if first.truncation == "head_tail" else "")
        label = f"{dataset}, {first.max_length} ({truncation})" + (" = plan" if window == "plan" else "")
        row = []
        for recipe in recipes:
            if (c := found.get(recipe)) is None:
                row.append("not run")
            elif recipe.startswith("dapt"):
                row.append(f"**{c.accuracy:.3f}** · {c.adapt_wall_s:.0f} + {c.fine_tune_wall_s:.0f} s "
                           f"({c.adapt_cpu_s:.0f} + {c.fine_tune_cpu_s:.0f} s CPU)")
            else:
                row.append(f"**{c.accuracy:.3f}** · {c.fine_tune_wall_s:.0f} s ({c.fine_tune_cpu_s:.0f} s CPU)")
        rows.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(rows + [f"| {note} |" + " |" * len(recipes) for note in skipped])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: amazon,long_documents")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated: {','.join(RECIPES)}")
    parser.add_argument("--lengths", default="64,plan", help="comma-separated: 64 and/or plan")
    parser.add_argument("--train-docs", type=int, default=160)
    parser.add_argument("--validation-docs", type=int, default=32)
    parser.add_argument("--test-docs", type=int, default=240)
    parser.add_argument("--corpus-docs", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (every cell)")
    parser.add_argument("--mlm-epochs", type=int, default=1, help="domain adaptation MLM epochs")
    parser.add_argument("--head-warmup-epochs", type=int, default=1,
                        help="MLM-head fit before adaptation (MiniLM ships without one; the platform's default is 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the cells (and notes) here")
    parser.add_argument("--table-from", help="comma-separated --json files of earlier runs: print their joint table")
    args = parser.parse_args()
    if args.table_from:
        saved = [json.loads(Path(p).read_text()) for p in args.table_from.split(",")]
        print(markdown([Cell(**c) for s in saved for c in s["cells"]], [n for s in saved for n in s["notes"]]))
        return
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    model_dir = resolve_source(FoundationSource())
    tokenizer = load_tokenizer(model_dir)
    recipes = [r for r in args.recipes.split(",") if r]
    if unknown := sorted(set(recipes) - set(RECIPES)):
        raise SystemExit(f"unknown recipes {unknown}; choose from {list(RECIPES)}")
    print(f"MiniLM-L6, {args.epochs} fine-tuning epochs, {args.mlm_epochs} MLM epoch(s) after "
          f"{args.head_warmup_epochs} head warm-up epoch(s), {args.threads} thread(s), seed {args.seed}", flush=True)
    cells: list[Cell] = []
    skipped: list[str] = []
    started = time.perf_counter()
    for name in args.datasets.split(","):
        if name not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
        dataset = sentences_dataset() if name == SENTENCE_DOMAIN else documents_dataset(args)
        splits = dataset.splits
        length = planned_length(model_dir, tokenizer, splits)
        tokens = np.array(count_tokens(tokenizer, splits.test.texts))
        print(f"\n{name}: train {len(splits.train)}, validation {len(splits.validation)}, test {len(splits.test)}; "
              f"test tokens mean {tokens.mean():.0f}, p95 {np.percentile(tokens, 95):.0f}, "
              f"{np.mean(tokens > 64):.0%} over 64; corpus: {dataset.corpus_note}\n  plan: {length.explanation}",
              flush=True)
        windows = []
        if "64" in args.lengths.split(","):
            windows.append(Window("64", 64, "head", "head"))  # the platform's default configs
        if "plan" in args.lengths.split(","):
            if length.max_length == 64:
                skipped.append(f"{name}: the plan chose 64 ({length.bound_by}), so the 64-token rows are the plan's")
                print(f"  {skipped[-1]}")
            else:
                windows.append(Window("plan", length.max_length, length.truncation, length.mlm_texts))
        for window in windows:
            print(f" max_length {window.max_length}, fine-tuning {window.truncation}, adaptation {window.mlm_texts}",
                  flush=True)
            with tempfile.TemporaryDirectory(prefix="recipe_table_") as work:
                cells += run_cells(dataset, window, recipes, model_dir, tokenizer, args, Path(work))
            if args.json:
                args.json.write_text(json.dumps({"cells": [asdict(c) for c in cells], "notes": skipped}, indent=2))
    print(f"\n{markdown(cells, skipped)}\n\nwall {time.perf_counter() - started:.0f} s, "
          f"CPU {time.process_time():.0f} s", flush=True)


if __name__ == "__main__":
    main()
