"""The labelled_data asset on the user's own file, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets import labelled_data
from assets.labelled_data import LabelledDataConfig
from tests.dagster.conftest import make_stage_resources


def test_a_users_csv_is_validated_split_and_hashed(tmp_path: Path) -> None:
    rows = [(f"great product number {i}", "pos") for i in range(20)] + [(f"awful item {i}", "neg") for i in range(20)]
    rows += [("great product number 3", "pos"), ("mixed feelings", "pos"), ("mixed feelings", "neg")]
    path = tmp_path / "reviews.csv"
    path.write_text("body,sentiment\n" + "".join(f"{t},{label}\n" for t, label in rows))
    config = {"path": str(path), "text_column": "body", "label_column": "sentiment", "labels": ["neg", "pos"]}
    result = make_stage_resources(tmp_path).materialize([labelled_data], {"ops": {"labelled_data": {"config": config}}})
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (meta["rows_read"], meta["rows_kept"]) == (43, 40)
    assert (meta["exact_duplicates_dropped"], meta["conflicting_texts_dropped"], meta["conflicting_rows_dropped"]) == (1, 1, 2)
    assert meta["split_sizes"] == {"train": 28, "validation": 4, "test": 8}
    written = json.loads((Path(str(meta["stage_output"])) / "splits.json").read_text())
    assert written["hashes"] == {k: v for k, v in meta["content_hashes"].items() if k != "dataset"}  # type: ignore[union-attr]


def test_a_bad_row_fails_the_asset_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\nfine,pos\n,neg\n")
    config = {"path": str(path), "labels": ["neg", "pos"]}
    with pytest.raises(Exception, match=r"reviews\.csv: 1 problem\(s\)\s+- line 3: column 'text' is empty"):
        make_stage_resources(tmp_path).materialize([labelled_data], {"ops": {"labelled_data": {"config": config}}})


def test_a_path_without_labels_is_refused() -> None:
    with pytest.raises(ValueError, match=r"labelled_data\.labels must list the allowed label values when a path is given"):
        LabelledDataConfig(path="/data/x.csv").source()


def test_an_unknown_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown bundled domain 'twitter'"):
        LabelledDataConfig(domain="twitter").source()
