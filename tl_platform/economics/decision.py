"""The transfer decision tree: which recipe, from inputs measured on the data, with its reasons and runner-up.

The tree, in the order it is walked:

1. No pretrained model for the modality: train from scratch (runner-up: prompting a frontier model).
2. Fewer than ``few_labels_per_class`` labelled examples in the smallest class: too few to fine-tune and
   validate reliably. Prompt a frontier model when its latency fits the SLA and the daily volume is below the
   API/self-host crossover (runner-up: LoRA); otherwise LoRA, which trains the fewest weights (runner-up:
   prompting, benchmarked offline).
3. The target is far from general text (relative embedding distance at or above ``far_threshold``, see
   ``measurements``) and there are at least ``min_unlabelled_texts_for_adaptation`` unlabelled in-domain texts:
   domain-adaptive pretraining, then fine-tuning chosen by step 4 (runner-up: the same fine-tuning without it).
4. Fine-tuning method. Several tasks or tenants share the backbone: LoRA, one frozen backbone with an adapter
   per task (runner-up: full). A single task with at least ``full_fine_tune_min_per_class`` examples in its
   smallest class: full fine-tuning (runner-up: LoRA). Otherwise LoRA (runner-up: prompting when the API is
   allowed, else full fine-tuning).

Beside the recipe, the plan chooses ``max_length`` (``choose_max_length``) from the texts' token lengths when the
foundation's tokenizer measured them: the configured percentile rounded up to a multiple, no shorter than a
floor, and capped by the model's limit and by the latency SLA (the FLOP model of ``training.long_text``). The run
config sets it for the stages that cut text (domain adaptation and fine-tuning); export and serving read it
from the task model's bundle. So with the strategy for texts beyond it (``LengthChoice.truncation``): when the
percentile's texts do not fit under the cap, fine-tuning keeps head and tail (``truncation: head_tail``, which the
task bundle records and export and serving follow) and domain adaptation trains on the whole texts in windows
(``truncation: chunks``); when they fit, both keep the head. The assumptions say which, and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tl_platform.economics.costs import PriceTable, require_positive
from tl_platform.economics.length_assumptions import length_assumptions
from tl_platform.economics.measurements import (
    DEFAULT_FAR_THRESHOLD,
    DEFAULT_MAX_TEXTS_FOR_LENGTHS,
    DEFAULT_MAX_TEXTS_PER_DOMAIN,
    MIN_TARGET_TEXTS,
    DomainDistance,
    Embedder,
    LabelCounts,
    TokenCounter,
    count_labels,
    measure_domain_distance,
    measure_token_lengths,
)
from tl_platform.economics.run_config import configured_recipe, run_config_for
from tl_platform.economics.serving import ApiPricing, SelfHosting, serving_costs
from tl_platform.training.long_text import (
    MAX_MAX_LENGTH,
    MIN_MAX_LENGTH,
    REFERENCE_LATENCY_MS,
    REFERENCE_TOKENS,
    LengthChoice,
    ModelWindow,
    TokenLengths,
    choose_max_length,
)

RECIPES = ("prompting", "lora", "full_fine_tune", "dapt_then_fine_tune", "from_scratch")
FINE_TUNE_METHODS = ("lora", "full")
_LABELS = {
    "prompting": "prompting a frontier model",
    "lora": "LoRA fine-tuning",
    "full_fine_tune": "full fine-tuning",
    "from_scratch": "training from scratch",
}


@dataclass(frozen=True)
class Recipe:
    """A recipe; fine-tuning recipes carry their method (``lora`` or ``full``)."""

    name: str
    fine_tune_method: str | None = None

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise ValueError(f"Recipe.name must be one of {list(RECIPES)}, got {self.name!r}")
        expected = {"lora": "lora", "full_fine_tune": "full"}.get(self.name)
        if expected is not None and self.fine_tune_method not in (None, expected):
            raise ValueError(f"Recipe {self.name!r} fine-tunes with {expected!r}, got {self.fine_tune_method!r}")
        if expected is not None:
            object.__setattr__(self, "fine_tune_method", expected)
        if self.name == "dapt_then_fine_tune" and self.fine_tune_method not in FINE_TUNE_METHODS:
            raise ValueError(f"Recipe.fine_tune_method must be one of {list(FINE_TUNE_METHODS)} after domain adaptation")
        if self.name in ("prompting", "from_scratch") and self.fine_tune_method is not None:
            raise ValueError(f"Recipe {self.name!r} takes no fine_tune_method")

    @property
    def domain_adaptation(self) -> bool:
        return self.name == "dapt_then_fine_tune"

    @property
    def trainable_by_main_job(self) -> bool:
        return self.fine_tune_method is not None

    @property
    def label(self) -> str:
        if self.name == "dapt_then_fine_tune":
            return f"domain-adaptive pretraining, then {_LABELS['lora' if self.fine_tune_method == 'lora' else 'full_fine_tune']}"
        return _LABELS[self.name]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "fine_tune_method": self.fine_tune_method, "label": self.label,
                "domain_adaptation": self.domain_adaptation}


def fine_tune_recipe(method: str) -> Recipe:
    return Recipe("lora") if method == "lora" else Recipe("full_fine_tune")


@dataclass(frozen=True)
class PlanSettings:
    """Config of the plan: the service's constraints and the tree's thresholds.

    Attributes:
        latency_sla_ms: the p95 latency the service must meet.
        daily_requests: the planned daily volume.
        tasks_sharing_backbone: tasks or tenants that will share one backbone (1 = this task alone).
        api_latency_ms: assumed p95 latency of a frontier-model API for a short classification prompt.
        few_labels_per_class: below this many examples in the smallest class, prompting is the baseline to beat.
        full_fine_tune_min_per_class: from this many in the smallest class, a single task fine-tunes every weight.
        min_unlabelled_texts_for_adaptation: unlabelled in-domain texts domain-adaptive pretraining needs.
        far_threshold: relative domain distance from which the target counts as far (see ``measurements``).
        max_texts_per_domain: texts embedded per domain (a seeded sample beyond it).
        seed: of that sample (and of the token-length sample).
        length_percentile: the share of texts, in percent, ``max_length`` should hold whole.
        length_multiple: ``max_length`` is rounded up to a multiple of this (8 or 16 suit the hardware).
        min_max_length: the shortest ``max_length`` chosen; padding is per batch, so a window longer than short
            texts costs nothing, and below 64 a cut saves little (``training.long_text``).
        max_texts_for_lengths: texts whose tokens are counted (a seeded sample beyond it).
        serving_latency_ms / serving_latency_tokens: the measured serving latency the FLOP model scales from,
            and the request length it was measured at (defaults: the README's serving bench, MiniLM-L6;
            ``training.long_text`` documents the model).
        api, hosting, prices: the serving cost model the API/self-host crossover comes from.
    """

    latency_sla_ms: float = 500.0
    daily_requests: float = 10_000.0
    tasks_sharing_backbone: int = 1
    api_latency_ms: float = 1500.0
    few_labels_per_class: int = 100
    full_fine_tune_min_per_class: int = 5000
    min_unlabelled_texts_for_adaptation: int = 500
    far_threshold: float = DEFAULT_FAR_THRESHOLD
    max_texts_per_domain: int = DEFAULT_MAX_TEXTS_PER_DOMAIN
    seed: int = 0
    length_percentile: float = 95.0
    length_multiple: int = 16
    min_max_length: int = 64
    max_texts_for_lengths: int = DEFAULT_MAX_TEXTS_FOR_LENGTHS
    serving_latency_ms: float = REFERENCE_LATENCY_MS
    serving_latency_tokens: int = REFERENCE_TOKENS
    api: ApiPricing = field(default_factory=ApiPricing)
    hosting: SelfHosting = field(default_factory=SelfHosting)
    prices: PriceTable = field(default_factory=PriceTable)

    def __post_init__(self) -> None:
        for name in ("latency_sla_ms", "daily_requests", "api_latency_ms", "far_threshold", "serving_latency_ms"):
            require_positive("PlanSettings", name, getattr(self, name))
        for name in ("tasks_sharing_backbone", "few_labels_per_class", "max_texts_per_domain", "length_multiple",
                     "max_texts_for_lengths", "serving_latency_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlanSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.length_percentile <= 100.0:
            raise ValueError(f"PlanSettings.length_percentile must be in (0, 100], got {self.length_percentile}")
        if not MIN_MAX_LENGTH <= self.min_max_length <= MAX_MAX_LENGTH:
            raise ValueError(
                f"PlanSettings.min_max_length must be in [{MIN_MAX_LENGTH}, {MAX_MAX_LENGTH}], got {self.min_max_length}"
            )
        if self.full_fine_tune_min_per_class <= self.few_labels_per_class:
            raise ValueError(
                f"PlanSettings.full_fine_tune_min_per_class must be > few_labels_per_class={self.few_labels_per_class}, "
                f"got {self.full_fine_tune_min_per_class}"
            )
        if self.min_unlabelled_texts_for_adaptation < 0:
            raise ValueError(
                f"PlanSettings.min_unlabelled_texts_for_adaptation must be >= 0, got {self.min_unlabelled_texts_for_adaptation}"
            )


@dataclass(frozen=True)
class PlanInputs:
    """What the tree decides on; everything but the service constraints is measured."""

    pretrained_model: str | None
    labels: LabelCounts
    unlabelled_texts: int
    domain: DomainDistance | None
    tasks_sharing_backbone: int
    latency_sla_ms: float
    daily_requests: float
    api_latency_ms: float
    crossover_daily_requests: float | None
    lengths: TokenLengths | None = None
    window: ModelWindow | None = None

    @property
    def api_fits_latency(self) -> bool:
        return self.api_latency_ms <= self.latency_sla_ms

    @property
    def api_cheaper_at_volume(self) -> bool:
        return self.crossover_daily_requests is None or self.daily_requests < self.crossover_daily_requests

    def to_json(self) -> dict[str, Any]:
        return {
            "pretrained_model": self.pretrained_model,
            "labels": self.labels.to_json(),
            "unlabelled_texts": self.unlabelled_texts,
            "domain": self.domain.to_json() if self.domain else None,
            "tasks_sharing_backbone": self.tasks_sharing_backbone,
            "latency_sla_ms": self.latency_sla_ms,
            "daily_requests": self.daily_requests,
            "api_latency_ms": self.api_latency_ms,
            "crossover_daily_requests": self.crossover_daily_requests,
            "api_fits_latency": self.api_fits_latency,
            "api_cheaper_at_volume": self.api_cheaper_at_volume,
            "token_lengths": self.lengths.to_json() if self.lengths else None,
            "model_window": self.window.to_json() if self.window else None,
        }


@dataclass(frozen=True)
class TransferPlan:
    recommended: Recipe
    runner_up: Recipe
    reasons: tuple[str, ...]
    assumptions: tuple[str, ...]
    inputs: PlanInputs
    length: LengthChoice | None = None

    def to_json(self) -> dict[str, Any]:
        configured = configured_recipe(self)
        return {
            "recommended": self.recommended.to_json(),
            "runner_up": self.runner_up.to_json(),
            "reasons": list(self.reasons),
            "assumptions": list(self.assumptions),
            "inputs": self.inputs.to_json(),
            "max_length": self.length.to_json() if self.length else None,
            "run_config": run_config_for(self),
            "run_config_recipe": configured.to_json() if configured else None,
        }


def _api_reason(inputs: PlanInputs) -> str:
    crossover = "none" if inputs.crossover_daily_requests is None else f"{inputs.crossover_daily_requests:,.0f}"
    return (
        f"API latency {inputs.api_latency_ms:g} ms {'fits' if inputs.api_fits_latency else 'exceeds'} the "
        f"{inputs.latency_sla_ms:g} ms SLA; {inputs.daily_requests:,.0f} requests a day are "
        f"{'below' if inputs.api_cheaper_at_volume else 'above'} the API/self-host crossover ({crossover} a day)"
    )


def _choose_method(inputs: PlanInputs, settings: PlanSettings) -> tuple[Recipe, Recipe, str]:
    smallest = inputs.labels.smallest_class
    api_allowed = inputs.api_fits_latency and inputs.api_cheaper_at_volume
    if inputs.tasks_sharing_backbone >= 2:
        return Recipe("lora"), Recipe("full_fine_tune"), (
            f"{inputs.tasks_sharing_backbone} tasks share the backbone: one frozen backbone with an adapter per task"
        )
    if smallest >= settings.full_fine_tune_min_per_class:
        return Recipe("full_fine_tune"), Recipe("lora"), (
            f"a single task with {smallest:,} examples in its smallest class (>= {settings.full_fine_tune_min_per_class:,}): "
            "enough data to move every weight"
        )
    runner = Recipe("prompting") if api_allowed else Recipe("full_fine_tune")
    return Recipe("lora"), runner, (
        f"a single task with {smallest:,} examples in its smallest class ({settings.few_labels_per_class:,} to "
        f"{settings.full_fine_tune_min_per_class:,}): LoRA matches full fine-tuning at this size for fewer trained weights"
        + ("" if api_allowed else "; the API is ruled out, so full fine-tuning is the benchmark")
    )


def decide(inputs: PlanInputs, settings: PlanSettings) -> TransferPlan:
    """Walk the tree (see the module docstring) and say why at every step."""
    reasons: list[str] = []
    smallest = inputs.labels.smallest_class
    api_allowed = inputs.api_fits_latency and inputs.api_cheaper_at_volume
    if inputs.pretrained_model is None:
        reasons.append("no pretrained model exists for the modality: there is nothing to transfer from")
        recommended, runner_up = Recipe("from_scratch"), Recipe("prompting")
    elif smallest < settings.few_labels_per_class:
        reasons.append(
            f"the smallest class has {smallest} labelled examples (< {settings.few_labels_per_class}): too few to "
            "fine-tune and validate reliably"
        )
        reasons.append(_api_reason(inputs))
        if api_allowed:
            recommended, runner_up = Recipe("prompting"), Recipe("lora")
        else:
            reasons.append("the API is ruled out, so LoRA (fewest trained weights) it is; collect more labels")
            recommended, runner_up = Recipe("lora"), Recipe("prompting")
    else:
        reasons.append(f"pretrained model available: {inputs.pretrained_model}")
        reasons.append(f"{inputs.labels.total:,} labelled examples, {smallest:,} in the smallest class")
        domain = inputs.domain
        if domain is None:
            raise ValueError(
                f"PlanInputs.domain is required with {smallest} examples in the smallest class (>= "
                f"few_labels_per_class={settings.few_labels_per_class}); measure it on at least {MIN_TARGET_TEXTS} texts"
            )
        method, method_runner_up, method_reason = _choose_method(inputs, settings)
        distance = (
            f"relative domain distance {domain.relative:.2f} against {', '.join(domain.reference_domains)} "
            f"(threshold {domain.threshold:g})"
        )
        enough_text = inputs.unlabelled_texts >= settings.min_unlabelled_texts_for_adaptation
        if domain.far and enough_text:
            reasons.append(f"the target is far from general text: {distance}; {inputs.unlabelled_texts:,} unlabelled "
                           f"in-domain texts (>= {settings.min_unlabelled_texts_for_adaptation:,}) to adapt on")
            recommended = Recipe("dapt_then_fine_tune", method.fine_tune_method)
            runner_up = method
        elif domain.far:
            reasons.append(f"the target is far from general text: {distance}; but only {inputs.unlabelled_texts:,} "
                           f"unlabelled texts (< {settings.min_unlabelled_texts_for_adaptation:,}): no domain adaptation")
            recommended, runner_up = method, Recipe("dapt_then_fine_tune", method.fine_tune_method)
        else:
            reasons.append(f"the target is close to general text: {distance}; no domain adaptation")
            recommended, runner_up = method, method_runner_up
        reasons.append(method_reason)
    assumptions: tuple[str, ...] = (
        f"latency SLA {inputs.latency_sla_ms:g} ms and {inputs.daily_requests:,.0f} requests a day (config)",
        f"frontier API p95 latency {inputs.api_latency_ms:g} ms (assumed)",
        f"{inputs.tasks_sharing_backbone} task(s) share the backbone (config)",
        (f"thresholds: few labels < {settings.few_labels_per_class} a class, full fine-tuning from "
        f"{settings.full_fine_tune_min_per_class:,} a class, domain adaptation from "
        f"{settings.min_unlabelled_texts_for_adaptation:,} unlabelled texts, far from relative distance "
        f"{settings.far_threshold:g} (calibrated for MiniLM)"),
        "crossover from the serving cost model's defaults (API list prices, self-hosted throughput, operations)",
        "labelled examples are counted over all splits; unlabelled texts are those domain adaptation trains on",
    )
    length = None
    if inputs.lengths is not None and inputs.window is not None:
        length = choose_max_length(
            inputs.lengths, inputs.window, percentile=settings.length_percentile, multiple=settings.length_multiple,
            floor=settings.min_max_length, latency_sla_ms=inputs.latency_sla_ms,
            reference_ms=settings.serving_latency_ms, reference_tokens=settings.serving_latency_tokens,
        )
        assumptions += length_assumptions(settings, length)
    return TransferPlan(recommended, runner_up, tuple(reasons), assumptions, inputs, length)


def measure_plan_inputs(
    texts: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    unlabelled_texts: int,
    references: Mapping[str, Sequence[str]],
    embed: Embedder | None,
    pretrained_model: str | None,
    settings: PlanSettings,
    count_tokens: TokenCounter | None = None,
    window: ModelWindow | None = None,
) -> PlanInputs:
    """Measure the data: label counts, the domain distance with the pretrained encoder when there is one, and
    the token lengths with its tokenizer when ``count_tokens`` and the model's ``window`` are given."""
    if (embed is None) != (pretrained_model is None):
        raise ValueError("give embed and pretrained_model together (a pretrained encoder embeds), or neither")
    if (count_tokens is None) != (window is None):
        raise ValueError("give count_tokens and window together (the foundation's tokenizer and its limits), or neither")
    lengths = None
    if count_tokens is not None and texts:
        lengths = measure_token_lengths(texts, count_tokens, settings.max_texts_for_lengths, settings.seed)
    domain = None
    if embed is not None and len(texts) >= MIN_TARGET_TEXTS:  # fewer: only the few-labels branch can be reached
        domain = measure_domain_distance(
            texts, references, embed, settings.far_threshold, settings.max_texts_per_domain, settings.seed
        )
    serving = serving_costs(settings.daily_requests, settings.api, settings.hosting, settings.prices)
    return PlanInputs(
        pretrained_model=pretrained_model,
        labels=count_labels(labels, class_names),
        unlabelled_texts=unlabelled_texts,
        domain=domain,
        tasks_sharing_backbone=settings.tasks_sharing_backbone,
        latency_sla_ms=settings.latency_sla_ms,
        daily_requests=settings.daily_requests,
        api_latency_ms=settings.api_latency_ms,
        crossover_daily_requests=serving.crossover_daily_requests,
        lengths=lengths,
        window=window if lengths is not None else None,
    )


def plan_transfer(
    texts: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    unlabelled_texts: int,
    references: Mapping[str, Sequence[str]],
    embed: Embedder | None,
    pretrained_model: str | None,
    settings: PlanSettings,
    count_tokens: TokenCounter | None = None,
    window: ModelWindow | None = None,
) -> TransferPlan:
    """Measure, then decide: the entry point of the ``transfer_plan`` asset and ``tlp plan``."""
    inputs = measure_plan_inputs(
        texts, labels, class_names, unlabelled_texts, references, embed, pretrained_model, settings, count_tokens, window
    )
    return decide(inputs, settings)
