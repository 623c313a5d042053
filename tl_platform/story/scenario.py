"""The world the main command simulates: which traffic each day brings, and how the loop is configured for it.

Three phases of the world, one after the other: steady (the domain the model was trained on), a benign shift
(another domain the model still handles, its reviews two sentences long: drift without harm) and a harmful one (reviews of a third domain with
their evaluative words in slang, ``shifts.slang``, mixed with the original domain). The platform's own phases
(retrain, shadow, A/B, after the decision) happen inside the harmful phase, when the loop gets to them.

Texts the model trained on never reach the canary: steady traffic comes from the validation and test splits the
``labelled_data`` asset makes (same fractions and seed), and the harmful domain is cut in two, one half for the
days a retrain may learn from, the other for the days that judge it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from tl_platform.data.bundled import bundled_source
from tl_platform.data.loading import load_labelled_text
from tl_platform.data.schema import LabelledDataset
from tl_platform.data.splits import SplitFractions, stratified_split
from tl_platform.simulation.shifts import slang
from tl_platform.simulation.traffic import TrafficDay, sample_day
from tl_platform.validation import require

WorldPhase = Literal["steady", "benign", "harmful"]
DOMAINS = ("amazon", "yelp", "imdb")
# Day-of-week volume (Monday first): weekends are quieter, as most review traffic is.
WEEKLY_CYCLE = (1.0, 1.0, 1.0, 1.0, 0.95, 0.65, 0.6)


@dataclass(frozen=True)
class StoryConfig:
    """What the main command simulates and how the loop is set for it; every field is validated here."""

    seed: int = 7
    domain: str = "amazon"  # the model's own domain
    benign_domain: str = "yelp"
    harmful_domain: str = "imdb"
    steady_days: int = 7
    benign_days: int = 7
    harmful_days: int = 21  # the platform must notice, retrain, shadow, test and decide inside these
    weekday_requests: int = 500
    slang_share: float = 2 / 3  # of the harmful days' traffic; the rest is the model's own domain
    units: int = 600  # distinct users; each stays on one variant for an experiment
    feedback_share: float = 0.8
    feedback_delay_hours: float = 6.0
    learn_days: int = 2  # harmful days drawn from the half a retrain may learn from
    shadow_days: int = 1
    ab_min_days: int = 7
    ab_max_days: int = 14
    ab_mde: float = 0.05
    ab_baseline: float = 0.8
    task_epochs: int | None = None  # the plan's recipe decides when None
    domain_adaptation: bool | None = None  # the plan decides when None
    concurrency: int = 4  # simultaneous client connections replaying a day
    days_ago_end: int = 3  # the last simulated day ends this many days before today (windows must be complete)
    trigger_cooldown_days: int = field(default=0)  # 0: the whole harmful phase (one retrain per story)

    def __post_init__(self) -> None:
        for name in ("domain", "benign_domain", "harmful_domain"):
            require(getattr(self, name) in DOMAINS, f"{name} must be one of {DOMAINS}, got {getattr(self, name)!r}")
        require(len({self.domain, self.benign_domain, self.harmful_domain}) == 3,
                "domain, benign_domain and harmful_domain must be three different bundled domains")
        for name, low in (("steady_days", 1), ("benign_days", 1), ("harmful_days", 2), ("weekday_requests", 50),
                          ("units", 2), ("learn_days", 1), ("ab_min_days", 1), ("concurrency", 1),
                          ("days_ago_end", 3)):
            require(getattr(self, name) >= low, f"{name} must be at least {low}, got {getattr(self, name)}")
        require(self.learn_days < self.harmful_days, f"learn_days ({self.learn_days}) must leave harmful days to judge "
                                                     f"the retrain on (harmful_days {self.harmful_days})")
        require(self.ab_max_days >= self.ab_min_days, f"ab_max_days ({self.ab_max_days}) must be at least ab_min_days")
        require(0 <= self.shadow_days <= 7, f"shadow_days must be in [0, 7], got {self.shadow_days}")
        require(0.0 < self.slang_share <= 1.0, f"slang_share must be in (0, 1], got {self.slang_share}")
        require(0.0 < self.feedback_share <= 1.0, f"feedback_share must be in (0, 1], got {self.feedback_share}")
        require(0.0 <= self.feedback_delay_hours <= 24.0,
                f"feedback_delay_hours must be in [0, 24] (labels land before the window is judged), "
                f"got {self.feedback_delay_hours}")
        require(0.0 < self.ab_mde < 1.0 and 0.0 < self.ab_baseline < 1.0, "ab_mde and ab_baseline must be in (0, 1)")
        require(self.task_epochs is None or 1 <= self.task_epochs <= 50, "task_epochs must be in [1, 50] or unset")
        require(self.trigger_cooldown_days >= 0, "trigger_cooldown_days must be at least 0")

    @property
    def total_days(self) -> int:
        return self.steady_days + self.benign_days + self.harmful_days

    @property
    def cooldown_hours(self) -> float:
        return 24.0 * (self.trigger_cooldown_days or self.harmful_days)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def shortened(**overrides: object) -> StoryConfig:
    """The same story in a few days: the end-to-end test's configuration (same code path, fewer days)."""
    # Two A/B days must detect a gain the retrain makes from one day of feedback: the harmful days are all slang
    # (a +4-point gain on a third of standard traffic would be diluted below what 3,000 requests can see).
    values: dict[str, object] = {
        "steady_days": 1, "benign_days": 1, "harmful_days": 5, "learn_days": 1, "weekday_requests": 1500,
        "slang_share": 1.0, "shadow_days": 1, "ab_min_days": 2, "ab_max_days": 3, "ab_mde": 0.1, "task_epochs": 5,
        "domain_adaptation": False,
    }
    values.update(overrides)
    return StoryConfig(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StoryDay:
    index: int  # 0-based
    day: date
    phase: WorldPhase

    @property
    def weekday(self) -> str:
        return self.day.strftime("%a")


def first_day(config: StoryConfig, today: date) -> date:
    """The first simulated day of a story started ``today``: its last day ends ``days_ago_end`` days before."""
    return today - timedelta(days=config.days_ago_end + config.total_days - 1)


def timeline(config: StoryConfig, first: date) -> list[StoryDay]:
    """Every simulated day, oldest first, from ``first`` (kept in the state, so a story resumed tomorrow keeps
    its dates)."""
    steady: list[WorldPhase] = ["steady"]
    benign: list[WorldPhase] = ["benign"]
    harmful: list[WorldPhase] = ["harmful"]
    phases = steady * config.steady_days + benign * config.benign_days + harmful * config.harmful_days
    return [StoryDay(i, first + timedelta(days=i), phase) for i, phase in enumerate(phases)]


@dataclass(frozen=True)
class StoryData:
    """The bundled domains, cut so that what the model or a retrain learned from never judges it."""

    own_held_out: LabelledDataset
    benign: LabelledDataset
    harmful_learn: LabelledDataset
    harmful_judge: LabelledDataset


def load_story_data(config: StoryConfig, split_seed: int = 42) -> StoryData:
    own = stratified_split(load_labelled_text(bundled_source(config.domain)), SplitFractions(), split_seed)
    harmful = stratified_split(load_labelled_text(bundled_source(config.harmful_domain)),
                               SplitFractions(0.5, 0.25, 0.25), config.seed)
    return StoryData(
        own_held_out=_joined(own.validation, own.test, f"{config.domain} held out"),
        benign=paired_reviews(load_labelled_text(bundled_source(config.benign_domain))),
        harmful_learn=harmful.train,
        harmful_judge=_joined(harmful.validation, harmful.test, f"{config.harmful_domain} held out"),
    )


def paired_reviews(dataset: LabelledDataset) -> LabelledDataset:
    """Each text followed by the next text of the same label: reviews two sentences long.

    Measured on the full story: the benign domain's sentences alone moved every feature by less than the drift
    thresholds at 300-500 requests a day (KL 0.04-0.12 against 0.15, with significant gates), so nothing
    alerted; written twice as long, as if its users had started writing longer reviews, the shift is plain in
    the length features while each review keeps one sentiment the model can read.
    """
    by_label: dict[int, list[str]] = {}
    for text, label in zip(dataset.texts, dataset.labels, strict=True):
        by_label.setdefault(label, []).append(text)
    texts: list[str] = []
    labels: list[int] = []
    for label, group in sorted(by_label.items()):
        for i, text in enumerate(group):
            texts.append(f"{text} {group[(i + 1) % len(group)]}")
            labels.append(label)
    return LabelledDataset(texts=tuple(texts), labels=tuple(labels), schema=dataset.schema,
                           source=f"{dataset.source}, two sentences per review", rows_read=dataset.rows_read,
                           duplicates=dataset.duplicates)


def _joined(first: LabelledDataset, second: LabelledDataset, source: str) -> LabelledDataset:
    return LabelledDataset(texts=first.texts + second.texts, labels=first.labels + second.labels, schema=first.schema,
                           source=source, rows_read=first.rows_read + second.rows_read, duplicates=first.duplicates)


def day_volume(config: StoryConfig, day: date) -> int:
    return max(1, round(config.weekday_requests * WEEKLY_CYCLE[day.weekday()]))


def traffic_for(config: StoryConfig, data: StoryData, story_day: StoryDay) -> list[TrafficDay]:
    """The day's requests (deterministic in the seed and the day): one or two slices of traffic."""
    volume, seed = day_volume(config, story_day.day), config.seed * 1000 + story_day.index

    def part(dataset: LabelledDataset, requests: int, domain: str, register: str, offset: int,
             shifted: bool = False) -> TrafficDay:
        sampled = sample_day(story_day.day, dataset, requests, seed=seed * 10 + offset,
                             attributes={"domain": domain, "register": register},
                             feedback_share=config.feedback_share, shift=slang if shifted else None)
        return TrafficDay(sampled.day, sampled.texts, sampled.labels, sampled.attributes, sampled.feedback_share,
                          config.feedback_delay_hours, config.units)

    if story_day.phase == "steady":
        return [part(data.own_held_out, volume, config.domain, "standard", 0)]
    if story_day.phase == "benign":
        return [part(data.benign, volume, config.benign_domain, "standard", 0)]
    harmful_index = story_day.index - config.steady_days - config.benign_days
    source = data.harmful_learn if harmful_index < config.learn_days else data.harmful_judge
    shifted = max(1, round(volume * config.slang_share))
    parts = [part(source, shifted, config.harmful_domain, "slang", 0, shifted=True)]
    if volume - shifted > 0:
        parts.append(part(data.own_held_out, volume - shifted, config.domain, "standard", 1))
    return parts


def story_guardrails(config: StoryConfig) -> list[dict[str, Any]]:
    """The pre-registered guardrails; the old domain's accuracy is guarded only where its traffic remains."""
    guardrails: list[dict[str, Any]] = [
        # a shared 2-core machine's tail latency moves by tens of milliseconds from minute to minute
        {"name": "p99_latency", "metric": "p99_latency_ms", "limit": 500.0, "direction": "lower",
         "comparison": "vs_champion"},
        {"name": "error_rate", "metric": "error_rate", "limit": 0.01, "direction": "lower"},
    ]
    if config.slang_share < 1.0:
        guardrails.append({"name": "standard_accuracy", "metric": "accuracy", "limit": -0.03, "direction": "higher",
                           "comparison": "vs_champion", "slice": {"register": "standard"}})
    return guardrails


def experiment_config(config: StoryConfig, candidate: str, experiment_id: str, start: date) -> dict[str, Any]:
    """``ab_experiment``'s run config for the story's candidate: the spec it pre-registers."""
    return {"candidate_version": candidate, "experiment_id": experiment_id, "start_day": start.isoformat(),
            "baseline": config.ab_baseline, "mde": config.ab_mde, "min_duration_days": config.ab_min_days,
            "max_duration_days": config.ab_max_days, "slices": ["register", "domain"],
            "routing_salt": f"story-{config.seed}", "shadow_days": config.shadow_days,
            "guardrails": story_guardrails(config)}
