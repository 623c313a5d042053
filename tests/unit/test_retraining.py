from __future__ import annotations

import pytest

from tl_platform.data.schema import DuplicateReport, LabelledDataset, LabelSchema
from tl_platform.training.retraining import (
    ForgettingReport,
    NotEnoughFeedbackError,
    RetrainConfig,
    build_retrain_data,
    fresh_dataset,
)

SCHEMA = LabelSchema(labels=("0", "1"), names=("negative", "positive"))


def _dataset(prefix: str, n: int) -> LabelledDataset:
    return LabelledDataset(
        texts=tuple(f"{prefix} text {i}" for i in range(n)), labels=tuple(i % 2 for i in range(n)), schema=SCHEMA,
        source=prefix, rows_read=n, duplicates=DuplicateReport(0, 0, 0),
    )


def test_fresh_rows_are_deduplicated_and_conflicting_texts_dropped() -> None:
    texts = ["good", "good", "bad", "meh", "meh"]
    labels = ["1", "1", "0", "1", "0"]
    fresh, report = fresh_dataset(texts, labels, SCHEMA, "log")
    assert fresh.texts == ("good", "bad")
    assert [SCHEMA.labels[i] for i in fresh.labels] == ["1", "0"]
    assert (report.exact_duplicates, report.conflicting_texts, report.conflicting_rows) == (1, 1, 2)


def test_a_feedback_label_outside_the_model_label_set_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['7'\] are not in the model's label set \['0', '1'\]"):
        fresh_dataset(["a", "b"], ["1", "7"], SCHEMA, "log")


def test_training_mixes_fresh_and_replay_while_held_out_splits_stay_fresh() -> None:
    fresh, report = fresh_dataset([f"new {i}" for i in range(200)], [str(i % 2) for i in range(200)], SCHEMA, "log")
    data = build_retrain_data(fresh, report, _dataset("old", 1000), _dataset("test", 50), RetrainConfig(replay_ratio=1.0))
    splits = data.splits
    fresh_train = [t for t in splits.train.texts if t.startswith("new")]
    replay = [t for t in splits.train.texts if t.startswith("old")]
    assert len(replay) == len(fresh_train) == len(data.replay)
    assert all(t.startswith("new") for t in splits.validation.texts + splits.test.texts)
    assert not set(splits.test.texts) & set(splits.train.texts)
    assert len(splits.test) == 60 and len(splits.validation) == 30
    assert data.summary()["replay_rows"] == len(replay)


def test_replay_is_capped_and_can_be_switched_off() -> None:
    fresh, report = fresh_dataset([f"new {i}" for i in range(100)], [str(i % 2) for i in range(100)], SCHEMA, "log")
    capped = build_retrain_data(fresh, report, _dataset("old", 1000), _dataset("t", 5), RetrainConfig(replay_ratio=5, max_replay_rows=30))
    assert len(capped.replay) == 30
    none = build_retrain_data(fresh, report, _dataset("old", 1000), _dataset("t", 5), RetrainConfig(replay_ratio=0))
    assert len(none.replay) == 0


def test_previous_test_texts_never_enter_training_and_replay_never_repeats_fresh_texts() -> None:
    previous_test = _dataset("test", 40)
    texts = [*previous_test.texts[:20], *[f"new {i}" for i in range(100)], "old text 3"]
    fresh, report = fresh_dataset(texts, [str(i % 2) for i in range(len(texts))], SCHEMA, "log")
    data = build_retrain_data(fresh, report, _dataset("old", 10), previous_test, RetrainConfig(replay_ratio=1.0))
    every_text = set(data.splits.train.texts) | set(data.splits.validation.texts) | set(data.splits.test.texts)
    assert not every_text & set(previous_test.texts)
    assert data.dropped_as_previous_test == 20
    assert data.dropped_from_replay == 1  # "old text 3" arrived as fresh feedback
    assert data.splits.train.texts.count("old text 3") <= 1


def test_too_little_feedback_says_how_much_arrived_and_what_is_needed() -> None:
    fresh, report = fresh_dataset([f"new {i}" for i in range(30)], ["0", "1"] * 15, SCHEMA, "log")
    with pytest.raises(NotEnoughFeedbackError, match=r"30 distinct labelled texts arrived .* at least 60"):
        build_retrain_data(fresh, report, _dataset("old", 100), _dataset("t", 5), RetrainConfig())


def test_one_class_in_the_feedback_cannot_be_split_and_says_so() -> None:
    fresh, report = fresh_dataset([f"new {i}" for i in range(100)], ["1"] * 99 + ["0"], SCHEMA, "log")
    with pytest.raises(NotEnoughFeedbackError, match="needs at least 3 per class"):
        build_retrain_data(fresh, report, _dataset("old", 100), _dataset("t", 5), RetrainConfig())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replay_ratio", -0.1, r"replay_ratio must be in \[0, 10\]"),
        ("fresh_test_fraction", 0.5, r"fresh_test_fraction must be in \(0, 0.5\)"),
        ("min_fresh_rows", 5, r"min_fresh_rows must be in \[20, 10000000\]"),
        ("max_forgetting_points", -1, r"max_forgetting_points must be in \[0, 100\]"),
    ],
)
def test_config_names_the_field_and_its_range(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetrainConfig(**{field: value})  # type: ignore[arg-type]


def test_a_model_that_gains_on_new_data_but_forgets_the_old_fails_the_guard() -> None:
    report = ForgettingReport(candidate_fresh=0.83, live_fresh=0.80, candidate_previous=0.90, live_previous=0.95,
                              fresh_examples=300, previous_examples=200, min_fresh_gain_points=0.0,
                              max_forgetting_points=1.0)
    assert report.beats_live
    assert round(report.fresh_gain_points, 6) == 3.0 and round(report.previous_change_points, 6) == -5.0
    assert not report.within_forgetting_margin
    assert "may lose at most 1.0" in report.describe_previous()
    steady = ForgettingReport(0.86, 0.80, 0.945, 0.95, 300, 200, 0.0, 1.0)
    assert steady.beats_live and steady.within_forgetting_margin
    worse = ForgettingReport(0.79, 0.80, 0.95, 0.95, 300, 200, 0.0, 1.0)
    assert not worse.beats_live
