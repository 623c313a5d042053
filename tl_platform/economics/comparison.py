"""Two candidates back to back: train the plan's recommended recipe and its runner-up on the same splits.

Rather than argue the recipes on paper, ``compare_recipes`` fine-tunes both from the same foundation with the
same budget (epochs, ``max_length``, batch size, seed) on the same train and validation splits, scores both on
the same test split, and measures what a sponsor weighs: test accuracy, macro-F1, calibration (ECE), training
seconds, the saved model's and adapter's bytes, and single-request latency (median and p95 of one-text
forward passes of the merged PyTorch model on CPU, the same texts for both). A McNemar test on the test texts
the two classify differently says whether the accuracy gap is more than chance; the verdict names no winner
when it is not (p >= ``SIGNIFICANCE``).

Only fine-tuning recipes can be trained here (``COMPARABLE``): prompting an API and training from scratch are
refused with a message naming the recipe and what is allowed. Domain-adaptive pretraining runs when a candidate
asks for it (continued MLM on the training split's texts, then fine-tuning from the adapted encoder), and its
time counts in that candidate's training seconds.

Tracking plugs in from outside: ``open_run`` opens one run per candidate (the caller nests them under a
parent run), and each candidate's run gets the same metric names (``CandidateResult.metrics``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_platform.data.splits import DatasetSplits
from tl_platform.economics.decision import Recipe, TransferPlan
from tl_platform.evaluation.metrics import ClassificationReport, classification_report
from tl_platform.evaluation.model_measures import paired_latency_ms, predict_probabilities, weights_bytes
from tl_platform.tracking.protocol import NullTracker, RunTracker
from tl_platform.training.config import DomainAdaptationConfig, FineTuneConfig
from tl_platform.training.long_text import MlmTextStrategy, TruncationStrategy
from tl_platform.validation import require

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

COMPARABLE = ("lora", "full_fine_tune", "dapt_then_fine_tune")
SIGNIFICANCE = 0.05
EXACT_BELOW = 25  # discordant pairs below which McNemar uses the exact binomial test

RunOpener = Callable[[str, dict[str, str]], AbstractContextManager[RunTracker]]
Announce = Callable[[str], None]


class ComparisonError(ValueError):
    """The candidates cannot be compared as asked; the message says what was wrong and what is allowed."""


@dataclass(frozen=True)
class ComparisonBudget:
    """What each candidate gets, identically.

    Attributes:
        epochs: maximum fine-tuning epochs (early stopping on validation loss may end sooner).
        max_length: tokens per text, in training, scoring and the latency probe (the plan's choice).
        truncation / mlm_texts: how a longer text is cut for fine-tuning (``head`` or ``head_tail``), scoring and
            the probe, and for domain adaptation (``head`` or ``chunks``); the plan's choice (``LengthChoice``).
        batch_size: examples per optimiser step.
        learning_rate: head learning rate; None takes each method's default (1e-3 LoRA, 1e-4 full).
        seed: weight init, dropout and data order, the same for both.
        latency_requests: single-text predictions timed per candidate (after ``latency_warmup`` untimed ones).
        domain_adaptation_epochs / head_warmup_epochs: the MLM budget of a domain-adaptation candidate.
    """

    epochs: int = 3
    max_length: int = 64
    truncation: TruncationStrategy = "head"
    mlm_texts: MlmTextStrategy = "head"
    batch_size: int = 16
    learning_rate: float | None = None
    seed: int = 42
    latency_requests: int = 100
    latency_warmup: int = 5
    domain_adaptation_epochs: int = 1
    head_warmup_epochs: int = 1

    def __post_init__(self) -> None:
        require(1 <= self.epochs <= 1000, f"ComparisonBudget.epochs must be in [1, 1000], got {self.epochs}")
        require(8 <= self.max_length <= 8192, f"ComparisonBudget.max_length must be in [8, 8192], got {self.max_length}")
        require(1 <= self.latency_requests <= 100_000,
                f"ComparisonBudget.latency_requests must be in [1, 100000], got {self.latency_requests}")
        require(self.latency_warmup >= 0, f"ComparisonBudget.latency_warmup must be >= 0, got {self.latency_warmup}")
        require(1 <= self.domain_adaptation_epochs <= 1000,
                f"ComparisonBudget.domain_adaptation_epochs must be in [1, 1000], got {self.domain_adaptation_epochs}")
        # the rest is validated by the training configs, with messages naming their fields
        self.fine_tune_config("lora")
        self.domain_adaptation_config()

    def fine_tune_config(self, method: str) -> FineTuneConfig:
        return FineTuneConfig(method=method, epochs=self.epochs, batch_size=self.batch_size,  # type: ignore[arg-type]
                              learning_rate=self.learning_rate, max_length=self.max_length,
                              truncation=self.truncation, seed=self.seed)

    def domain_adaptation_config(self) -> DomainAdaptationConfig:
        return DomainAdaptationConfig(epochs=self.domain_adaptation_epochs, head_warmup_epochs=self.head_warmup_epochs,
                                      max_length=self.max_length, truncation=self.mlm_texts, seed=self.seed)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CandidateResult:
    """One trained candidate, scored on the test split. ``predictions`` follow the test split's order."""

    role: str
    recipe: Recipe
    report: ClassificationReport
    predictions: tuple[int, ...]
    test_sha256: str
    train_seconds: float
    domain_adaptation_seconds: float
    epochs_run: int
    trainable_parameters: int
    model_bytes: int
    adapter_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float

    def metrics(self) -> dict[str, float]:
        """The numbers each candidate's run logs, under the same names for both (MLflow's compare view)."""
        return {
            "test_accuracy": self.report.accuracy,
            "test_macro_f1": self.report.macro_f1,
            "test_ece": self.report.ece,
            "train_seconds": self.train_seconds,
            "domain_adaptation_seconds": self.domain_adaptation_seconds,
            "epochs_run": float(self.epochs_run),
            "trainable_parameters": float(self.trainable_parameters),
            "model_bytes": float(self.model_bytes),
            "adapter_bytes": float(self.adapter_bytes),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
        }

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "recipe": self.recipe.to_json(), "metrics": self.metrics(),
                "test_sha256": self.test_sha256, "test_examples": self.report.n}


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired predictions: ``b`` texts only the first got right, ``c`` only the second."""

    b: int
    c: int
    statistic: float
    p_value: float
    exact: bool

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE

    def to_json(self) -> dict[str, Any]:
        return {"b": self.b, "c": self.c, "statistic": self.statistic, "p_value": self.p_value, "exact": self.exact}


def mcnemar_test(truth: Sequence[int], first: Sequence[int], second: Sequence[int]) -> McNemarResult:
    """McNemar on the disagreements; exact (binomial) below ``EXACT_BELOW`` discordant pairs, else chi-squared
    with continuity correction (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    if not len(truth) == len(first) == len(second) or not truth:
        raise ValueError(f"McNemar needs paired predictions: {len(truth)} labels, {len(first)} and {len(second)} predictions")
    right_1 = np.asarray(first) == np.asarray(truth)
    right_2 = np.asarray(second) == np.asarray(truth)
    table = [[int(np.sum(right_1 & right_2)), int(np.sum(right_1 & ~right_2))],
             [int(np.sum(~right_1 & right_2)), int(np.sum(~right_1 & ~right_2))]]
    b, c = table[0][1], table[1][0]
    exact = b + c < EXACT_BELOW
    result = mcnemar(table, exact=exact, correction=True)
    return McNemarResult(b, c, float(result.statistic), float(min(1.0, result.pvalue)), exact)


@dataclass(frozen=True)
class PlanComparison:
    candidates: tuple[CandidateResult, CandidateResult]
    mcnemar: McNemarResult
    budget: ComparisonBudget
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return {"candidates": [c.to_json() for c in self.candidates], "mcnemar": self.mcnemar.to_json(),
                "budget": self.budget.to_json(), "verdict": self.verdict}


def budget_for(plan: TransferPlan, **fields: Any) -> ComparisonBudget:
    """A budget with the plan's ``max_length`` and truncation (when it chose them) and any other field given."""
    if plan.length is not None:
        fields.setdefault("max_length", plan.length.max_length)
        fields.setdefault("truncation", plan.length.truncation)
        fields.setdefault("mlm_texts", plan.length.mlm_texts)
    return ComparisonBudget(**fields)


def compare_plan(plan: TransferPlan, splits: DatasetSplits, model_dir: Path, tokenizer: PreTrainedTokenizerBase,
                 budget: ComparisonBudget, work_dir: Path, open_run: RunOpener | None = None,
                 announce: Announce | None = None) -> PlanComparison:
    """``compare_recipes`` on the plan's recommended recipe and its runner-up."""
    return compare_recipes(plan.recommended, plan.runner_up, splits, model_dir, tokenizer, budget, work_dir,
                           open_run, announce)


def log_comparison(tracker: RunTracker, comparison: PlanComparison) -> None:
    """The parent run's record: the budget, which recipe is which, McNemar's counts and p-value, the verdict."""
    one, two = comparison.candidates
    tracker.log_params({"recommended": one.recipe.name, "runner_up": two.recipe.name, "verdict": comparison.verdict,
                        "mcnemar_exact": comparison.mcnemar.exact, "test_sha256": one.test_sha256,
                        **{f"budget.{k}": v for k, v in comparison.budget.to_json().items()}})
    test = comparison.mcnemar
    tracker.log_metrics({"mcnemar_b": float(test.b), "mcnemar_c": float(test.c), "mcnemar_statistic": test.statistic,
                         "mcnemar_p_value": test.p_value, "test_examples": float(one.report.n),
                         "accuracy_difference": one.report.accuracy - two.report.accuracy})


def candidates_from_plan_json(payload: dict[str, Any]) -> tuple[Recipe, Recipe]:
    """The two recipes of a plan as ``TransferPlan.to_json`` wrote it (the ``transfer_plan`` asset's record)."""
    recipes = []
    for role in ("recommended", "runner_up"):
        entry = payload.get(role)
        if not isinstance(entry, dict) or "name" not in entry:
            raise ComparisonError(f"the plan has no {role.replace('_', '-')} recipe to compare; re-materialise transfer_plan")
        recipes.append(Recipe(entry["name"], entry.get("fine_tune_method")))
    return recipes[0], recipes[1]


def check_candidates(first: Recipe, second: Recipe) -> None:
    """Refuse a pair that cannot be trained side by side, saying which recipe and what is allowed."""
    for role, recipe in (("recommended", first), ("runner-up", second)):
        if recipe.name not in COMPARABLE:
            raise ComparisonError(
                f"the {role} recipe is {recipe.label} ({recipe.name}), which cannot be trained here: a comparison "
                f"trains two of {list(COMPARABLE)}. Benchmark {recipe.label} offline, or compare two fine-tuning recipes"
            )
    if first == second:
        raise ComparisonError(f"both candidates are {first.label}: a comparison needs two different recipes")


def compare_recipes(
    first: Recipe,
    second: Recipe,
    splits: DatasetSplits,
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    budget: ComparisonBudget,
    work_dir: Path,
    open_run: RunOpener | None = None,
    announce: Announce | None = None,
) -> PlanComparison:
    """Train ``first`` (the recommended recipe) and ``second`` (the runner-up) from the encoder in ``model_dir`` on
    the same splits and budget; score both on the same test split; test their disagreements.

    Latency is measured once both are trained, their requests interleaved (first, second, first, ...), so that
    neither gains from going second (warm caches) nor loses to a busy moment of a shared machine. Each candidate's
    run is written then: its training curves (recorded while it trained), params and final metrics."""
    check_candidates(first, second)
    trained = []
    for index, (role, recipe) in enumerate((("recommended", first), ("runner-up", second)), start=1):
        if announce is not None:
            announce(f"training candidate {index} of 2: {recipe.label} ({role}), up to {budget.epochs} epoch(s)")
        recorder = NullTracker()
        result, model = train_candidate(role, recipe, splits, model_dir, tokenizer, budget,
                                        work_dir / f"candidate_{index}", recorder)
        trained.append((result, model, recorder))
    if announce is not None:
        announce(f"timing {budget.latency_requests} single-text predictions of each, interleaved")
    probe = [splits.test.texts[i % len(splits.test)] for i in range(budget.latency_requests)]
    latencies = paired_latency_ms([model for _, model, _ in trained], tokenizer, probe, budget.max_length,
                                  budget.truncation, budget.latency_warmup)
    results = [replace(result, latency_p50_ms=p50, latency_p95_ms=p95)
               for (result, _, _), (p50, p95) in zip(trained, latencies, strict=True)]
    for index, (result, (_, _, recorder)) in enumerate(zip(results, trained, strict=True), start=1):
        if open_run is not None:
            _write_candidate_run(open_run, index, result, budget, recorder)
    one, two = results
    test = mcnemar_test(splits.test.labels, one.predictions, two.predictions)
    return PlanComparison((one, two), test, budget, verdict_for(one, two, test))


def _write_candidate_run(open_run: RunOpener, index: int, result: CandidateResult, budget: ComparisonBudget,
                         recorded: NullTracker) -> None:
    recipe = result.recipe
    tags = {"tlp.comparison.role": result.role, "tlp.comparison.recipe": recipe.name}
    with open_run(f"candidate {index}: {recipe.label}", tags) as tracker:
        tracker.log_params({"recipe": recipe.name, "recipe_label": recipe.label, "role": result.role,
                            "fine_tune_method": recipe.fine_tune_method, "domain_adaptation": recipe.domain_adaptation,
                            **{f"budget.{k}": v for k, v in budget.to_json().items()}, **recorded.params})
        for step, metrics in recorded.metrics:
            tracker.log_metrics(metrics, step=step)
        tracker.log_metrics(result.metrics())


def train_candidate(
    role: str,
    recipe: Recipe,
    splits: DatasetSplits,
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    budget: ComparisonBudget,
    work_dir: Path,
    tracker: RunTracker,
) -> tuple[CandidateResult, PreTrainedModel]:
    """Domain adaptation when the recipe asks for it, fine-tuning, then scores and sizes; the trained model (on CPU)
    comes back beside the result for the latency probe, which leaves the result's latency at 0 until it runs."""
    from tl_platform.training.classifier import fine_tune_classifier
    from tl_platform.training.domain_adaptation import adapt_to_domain

    assert recipe.fine_tune_method is not None
    start_dir, adaptation_seconds = model_dir, 0.0
    if recipe.domain_adaptation:
        began = time.perf_counter()
        adapted = adapt_to_domain(model_dir, tokenizer, splits.train.texts, splits.validation.texts + splits.test.texts,
                                  budget.domain_adaptation_config(), work_dir / "domain_adaptation", tracker)
        start_dir = work_dir / "adapted_encoder"
        adapted.encoder.save_pretrained(start_dir, safe_serialization=True)
        adaptation_seconds = time.perf_counter() - began
        tracker.log_metrics({"perplexity_before": adapted.perplexity_before, "perplexity_after": adapted.perplexity_after})
    tuned = fine_tune_classifier(start_dir, tokenizer, splits, budget.fine_tune_config(recipe.fine_tune_method),
                                 work_dir / "fine_tune", tracker)
    model: Any = tuned.model
    model.to("cpu").eval()  # scored and timed on CPU, where the service runs
    probabilities = predict_probabilities(model, tokenizer, splits.test.texts, budget.max_length, budget.truncation,
                                          budget.batch_size)
    model_bytes = weights_bytes(_saved(model, work_dir / "model"))
    adapter_bytes = weights_bytes(tuned.adapter_dir) if tuned.adapter_dir is not None else model_bytes
    return CandidateResult(
        role=role,
        recipe=recipe,
        report=classification_report(probabilities, splits.test.labels, splits.test.schema.names),
        predictions=tuple(int(i) for i in probabilities.argmax(axis=1)),
        test_sha256=texts_sha256(splits.test.texts),
        train_seconds=adaptation_seconds + tuned.train_seconds,
        domain_adaptation_seconds=adaptation_seconds,
        epochs_run=len(tuned.epochs),
        trainable_parameters=tuned.trainable_parameters,
        model_bytes=model_bytes,
        adapter_bytes=adapter_bytes,
        latency_p50_ms=0.0,
        latency_p95_ms=0.0,
    ), model


def _saved(model: PreTrainedModel, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def texts_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()


def verdict_for(first: CandidateResult, second: CandidateResult, test: McNemarResult) -> str:
    """One sentence; it names a more accurate candidate only when McNemar's p is below ``SIGNIFICANCE``."""
    n = first.report.n
    how = "exact" if test.exact else "chi-squared"
    counts = (f"they disagree on {test.b + test.c} of {n} test texts ({test.b} only the {first.role} got right, "
              f"{test.c} only the {second.role}); McNemar {how} p = {test.p_value:.3g}")
    if not test.significant:
        return (f"No significant difference in accuracy ({first.report.accuracy:.3f} against "
                f"{second.report.accuracy:.3f}): {counts}. Choose on cost: training time, size and latency.")
    better, worse = (first, second) if test.b > test.c else (second, first)
    return (f"{better.recipe.label} ({better.role}) is more accurate than {worse.recipe.label}: "
            f"{better.report.accuracy:.3f} against {worse.report.accuracy:.3f}; {counts}.")
