"""Retraining on production feedback: fresh labelled data plus a replay buffer, and the guard against forgetting.

A model retrained on the shifted traffic alone learns the new domain and forgets the old one; a model that
gains 3 points on the new data and loses 5 on the old is a regression. So the training set mixes the fresh
rows with a replay buffer drawn from the earlier training data, and the result is judged twice: it must beat
the live model on held-out fresh data, and must not lose more than a margin on the previous test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_platform.data.loading import resolve_duplicates
from tl_platform.data.schema import DuplicateReport, LabelledDataset, LabelSchema
from tl_platform.data.splits import DatasetSplits, SplitFractions, stratified_split
from tl_platform.export.exported_bundle import torch_runner
from tl_platform.export.gates import batched_outputs
from tl_platform.training.long_text import TruncationStrategy
from tl_platform.validation import require

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class RetrainConfig:
    """How the retraining set is built and how the retrained model is judged.

    Attributes:
        replay_ratio: replay rows per fresh training row, in [0, 10]. Default 2: measured on the constructed
            harmful shift (bench/retrain_recovery.py), one replay row per fresh row let the candidate lose up to
            3 points on the old test set, two kept the loss within half a point.
        max_replay_rows: cap on the replay buffer, in [0, 1000000].
        fresh_validation_fraction: share of the fresh rows held out for early stopping, in (0, 0.5).
        fresh_test_fraction: share of the fresh rows held out to judge candidate against live, in (0, 0.5).
        min_fresh_rows: fewer de-duplicated fresh labelled rows than this refuses to retrain, in [20, 10000000]:
            a handful of rows gives a test split too small to tell two models apart.
        min_fresh_gain_points: the candidate must beat the live model on fresh test data by more than this
            many accuracy points, in [0, 100].
        max_forgetting_points: the candidate may lose at most this many points on the previous test set, in [0, 100].
        seed: fixes the fresh split and the replay sample.
    """

    replay_ratio: float = 2.0
    max_replay_rows: int = 2000
    fresh_validation_fraction: float = 0.15
    fresh_test_fraction: float = 0.3
    min_fresh_rows: int = 60
    min_fresh_gain_points: float = 0.0
    max_forgetting_points: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        require(0 <= self.replay_ratio <= 10, f"RetrainConfig.replay_ratio must be in [0, 10], got {self.replay_ratio}")
        require(
            0 <= self.max_replay_rows <= 1_000_000,
            f"RetrainConfig.max_replay_rows must be in [0, 1000000], got {self.max_replay_rows}",
        )
        for name in ("fresh_validation_fraction", "fresh_test_fraction"):
            value = getattr(self, name)
            require(0 < value < 0.5, f"RetrainConfig.{name} must be in (0, 0.5), got {value}")
        require(
            20 <= self.min_fresh_rows <= 10_000_000,
            f"RetrainConfig.min_fresh_rows must be in [20, 10000000], got {self.min_fresh_rows}",
        )
        for name in ("min_fresh_gain_points", "max_forgetting_points"):
            value = getattr(self, name)
            require(0 <= value <= 100, f"RetrainConfig.{name} must be in [0, 100], got {value}")

    def fractions(self) -> SplitFractions:
        held_out = self.fresh_validation_fraction + self.fresh_test_fraction
        return SplitFractions(1 - held_out, self.fresh_validation_fraction, self.fresh_test_fraction)


class NotEnoughFeedbackError(ValueError):
    """Too few fresh labelled rows (after de-duplication) to retrain and judge the result."""


@dataclass(frozen=True)
class RetrainData:
    """The retraining splits (train = fresh train + replay; validation and test fresh only) and their parts."""

    splits: DatasetSplits
    fresh: LabelledDataset
    replay: LabelledDataset
    fresh_duplicates: DuplicateReport
    dropped_from_replay: int  # replay-pool rows whose text is also a fresh row (left out: they would leak)
    dropped_as_previous_test: int  # fresh rows whose text is in the previous test set (kept out of training)

    def summary(self) -> dict[str, int]:
        return {
            "fresh_rows": len(self.fresh),
            "fresh_train_rows": len(self.splits.train) - len(self.replay),
            "fresh_validation_rows": len(self.splits.validation),
            "fresh_test_rows": len(self.splits.test),
            "replay_rows": len(self.replay),
            "fresh_exact_duplicates_dropped": self.fresh_duplicates.exact_duplicates,
            "fresh_conflicting_texts_dropped": self.fresh_duplicates.conflicting_texts,
            "replay_rows_dropped_as_leaks": self.dropped_from_replay,
            "fresh_rows_dropped_as_previous_test": self.dropped_as_previous_test,
        }


def fresh_dataset(texts: Sequence[str], raw_labels: Sequence[str], schema: LabelSchema, source: str) -> tuple[LabelledDataset, DuplicateReport]:
    """Labelled production rows as a dataset: one row per text, texts fed back with conflicting labels dropped.

    The same text is often served (and labelled) many times; counting it once keeps the fresh test split from
    sharing texts with the fresh training split.
    """
    unknown = sorted({label for label in raw_labels if label not in schema.labels})
    if unknown:
        raise ValueError(f"feedback labels {unknown[:5]} are not in the model's label set {list(schema.labels)}")
    kept_texts, kept_labels, report = resolve_duplicates(list(texts), [schema.index_of(label) for label in raw_labels])
    dataset = LabelledDataset(
        texts=tuple(kept_texts), labels=tuple(kept_labels), schema=schema, source=source,
        rows_read=len(texts), duplicates=report,
    )
    return dataset, report


def build_retrain_data(
    fresh: LabelledDataset,
    fresh_duplicates: DuplicateReport,
    replay_pool: LabelledDataset,
    previous_test: LabelledDataset,
    config: RetrainConfig,
) -> RetrainData:
    """Split the fresh rows (stratified, seeded), then add a replay sample of ``replay_pool`` to the training split.

    Fresh rows whose text is in ``previous_test`` are left out: the forgetting guard scores the candidate on
    that set, and a model trained on it would pass the guard by memory. Raise ``NotEnoughFeedbackError``
    below ``config.min_fresh_rows`` or when a class has too few rows to split.
    """
    for name, other in (("replay pool", replay_pool), ("previous test set", previous_test)):
        if fresh.schema.labels != other.schema.labels:
            raise ValueError(f"fresh labels {fresh.schema.labels} differ from the {name}'s {other.schema.labels}")
    protected = set(previous_test.texts)
    kept = [i for i, text in enumerate(fresh.texts) if text not in protected]
    dropped_as_previous_test = len(fresh) - len(kept)
    fresh = fresh.subset(kept) if dropped_as_previous_test else fresh
    if len(fresh) < config.min_fresh_rows:
        raise NotEnoughFeedbackError(
            f"{len(fresh)} distinct labelled texts arrived (after de-duplication); retraining needs at least "
            f"{config.min_fresh_rows} (RetrainConfig.min_fresh_rows): widen the fresh-data window or wait for feedback"
        )
    try:
        fresh_splits = stratified_split(fresh, config.fractions(), config.seed)
    except ValueError as err:
        raise NotEnoughFeedbackError(f"fresh labelled data cannot be split: {err}") from err
    fresh_texts = set(fresh.texts)  # a fresh text in the replay sample would leak into (or repeat) the fresh splits
    eligible = [i for i, text in enumerate(replay_pool.texts) if text not in fresh_texts]
    wanted = min(round(len(fresh_splits.train) * config.replay_ratio), config.max_replay_rows, len(eligible))
    rng = np.random.default_rng(config.seed)
    chosen = sorted(rng.choice(len(eligible), size=wanted, replace=False).tolist()) if wanted else []
    replay = replay_pool.subset([eligible[i] for i in chosen])
    train = LabelledDataset(
        texts=fresh_splits.train.texts + replay.texts,
        labels=fresh_splits.train.labels + replay.labels,
        schema=fresh.schema,
        source=f"fresh feedback ({fresh.source}) + replay of {replay_pool.source}",
        rows_read=len(fresh_splits.train) + len(replay),
        duplicates=DuplicateReport(0, 0, 0),
    )
    return RetrainData(
        splits=DatasetSplits(train, fresh_splits.validation, fresh_splits.test, seed=config.seed),
        fresh=fresh,
        replay=replay,
        fresh_duplicates=fresh_duplicates,
        dropped_from_replay=len(replay_pool) - len(eligible),
        dropped_as_previous_test=dropped_as_previous_test,
    )


@dataclass(frozen=True)
class ForgettingReport:
    """Candidate against the live model on the fresh test split and on the previous test set (accuracies in [0, 1])."""

    candidate_fresh: float
    live_fresh: float
    candidate_previous: float
    live_previous: float
    fresh_examples: int
    previous_examples: int
    min_fresh_gain_points: float
    max_forgetting_points: float

    @property
    def fresh_gain_points(self) -> float:
        return 100 * (self.candidate_fresh - self.live_fresh)

    @property
    def previous_change_points(self) -> float:
        return 100 * (self.candidate_previous - self.live_previous)

    @property
    def beats_live(self) -> bool:
        return self.fresh_gain_points > self.min_fresh_gain_points

    @property
    def within_forgetting_margin(self) -> bool:
        return -self.previous_change_points <= self.max_forgetting_points

    def describe_fresh(self) -> str:
        return (
            f"fresh test accuracy {self.candidate_fresh:.4f} against the live model's {self.live_fresh:.4f} "
            f"({self.fresh_gain_points:+.1f} points; must exceed {self.min_fresh_gain_points:+.1f}) on "
            f"{self.fresh_examples} texts"
        )

    def describe_previous(self) -> str:
        return (
            f"previous test accuracy {self.candidate_previous:.4f} against the live model's {self.live_previous:.4f} "
            f"({self.previous_change_points:+.1f} points; may lose at most {self.max_forgetting_points:.1f}) on "
            f"{self.previous_examples} texts"
        )

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "fresh_gain_points": self.fresh_gain_points,
            "previous_change_points": self.previous_change_points,
            "beats_live": self.beats_live,
            "within_forgetting_margin": self.within_forgetting_margin,
        }


def classifier_accuracy(
    model: Any, tokenizer: PreTrainedTokenizerBase, dataset: LabelledDataset, max_length: int,
    truncation: TruncationStrategy = "head",
) -> float:
    """Accuracy of a sequence classifier (PyTorch, eval mode) on a dataset, tokenised as in training."""
    if len(dataset) == 0:
        raise ValueError(f"{dataset.source}: accuracy of an empty dataset is undefined")
    logits, _ = batched_outputs(torch_runner(model), tokenizer, list(dataset.texts), max_length, truncation=truncation)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(dataset.labels)))
