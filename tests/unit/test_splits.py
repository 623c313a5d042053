"""Stratified splits: deterministic from a seed, disjoint, stratified, hashed, and read back intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_platform.data import LabelledDataset, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.data.schema import DuplicateReport, LabelSchema
from tl_platform.data.splits import read_splits


@pytest.fixture(scope="module")
def amazon() -> LabelledDataset:
    return load_labelled_text(bundled_source("amazon"))


def test_same_seed_same_splits_and_hashes(amazon: LabelledDataset) -> None:
    first = stratified_split(amazon, SplitFractions(), seed=7)
    second = stratified_split(amazon, SplitFractions(), seed=7)
    assert first.hashes() == second.hashes()
    assert first.test.texts == second.test.texts


def test_other_seed_other_splits(amazon: LabelledDataset) -> None:
    assert stratified_split(amazon, SplitFractions(), 7).hashes()["test"] != stratified_split(
        amazon, SplitFractions(), 8
    ).hashes()["test"]


def test_splits_are_disjoint_complete_and_stratified(amazon: LabelledDataset) -> None:
    splits = stratified_split(amazon, SplitFractions(0.7, 0.1, 0.2), seed=1)
    texts = [set(s.texts) for s in splits.by_name().values()]
    assert sum(len(t) for t in texts) == len(amazon)
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    # amazon keeps 497 negative and 493 positive: 20% of each, rounded, goes to test
    assert splits.test.label_counts() == {"negative": 99, "positive": 99}
    assert splits.validation.label_counts() == {"negative": 50, "positive": 49}
    assert len(splits.train) == 990 - 198 - 99


def test_eval_suite_is_validation_then_test(amazon: LabelledDataset) -> None:
    splits = stratified_split(amazon, SplitFractions(0.7, 0.1, 0.2), seed=1)
    suite = splits.eval_suite()
    assert len(suite) == 99 + 198
    assert suite.texts == splits.validation.texts + splits.test.texts
    assert suite.labels == splits.validation.labels + splits.test.labels
    assert not set(suite.texts) & set(splits.train.texts)


def test_written_splits_read_back_with_their_hashes(amazon: LabelledDataset, tmp_path: Path) -> None:
    splits = stratified_split(amazon, SplitFractions(), seed=3)
    splits.write_jsonl(tmp_path)
    again = read_splits(tmp_path)
    assert again.hashes() == splits.hashes()
    assert again.seed == 3


def test_edited_split_file_is_refused(amazon: LabelledDataset, tmp_path: Path) -> None:
    stratified_split(amazon, SplitFractions(), seed=3).write_jsonl(tmp_path)
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(test_file.read_text().replace('"label": "0"', '"label": "1"', 1))
    with pytest.raises(ValueError, match=r"split\(s\) \['test'\] changed since they were written"):
        read_splits(tmp_path)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.8, 0.1, 0.2), "must sum to 1, got 1.100000"),
        ((1.0, 0.0, 0.0), r"SplitFractions.train must be in \(0, 1\), got 1.0"),
        ((0.7, 0.35, -0.05), r"SplitFractions.test must be in \(0, 1\), got -0.05"),
    ],
)
def test_bad_fractions_name_the_field(fractions: tuple[float, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitFractions(*fractions)


def test_a_class_too_small_to_split_is_named() -> None:
    schema = LabelSchema(labels=("a", "b"), names=("alpha", "beta"))
    dataset = LabelledDataset(
        texts=("1", "2", "3", "4"), labels=(0, 0, 0, 1), schema=schema, source="mem", rows_read=4,
        duplicates=DuplicateReport(0, 0, 0),
    )
    with pytest.raises(ValueError, match="class 'beta' has 1 row"):
        stratified_split(dataset, SplitFractions(), seed=0)
