"""The loader: every format reads the same rows, and every kind of bad input names file, line and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tl_platform.data import DatasetSource, DataValidationError, LabelSchema, load_labelled_text
from tl_platform.data.bundled import BUNDLED_DOMAINS, bundled_source

SCHEMA = LabelSchema(labels=("neg", "pos"))
ROWS = [("good phone", "pos"), ("bad battery", "neg"), ("works fine", "pos")]


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def source(path: Path, **kwargs: object) -> DatasetSource:
    return DatasetSource(path=str(path), schema=SCHEMA, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        write(path, "text,label\n" + "".join(f"{t},{label}\n" for t, label in ROWS))
    elif fmt == "tsv":
        write(path, "text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in ROWS))
    elif fmt == "jsonl":
        write(path, "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in ROWS))
    else:
        pq.write_table(pa.table({"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]}), path)
    dataset = load_labelled_text(source(path))
    assert dataset.texts == ("good phone", "bad battery", "works fine")
    assert dataset.labels == (1, 0, 1)
    assert dataset.label_counts() == {"neg": 1, "pos": 2}


def test_content_hash_does_not_depend_on_format(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "a.csv", "text,label\n" + "".join(f"{t},{label}\n" for t, label in ROWS))
    jsonl_path = write(tmp_path / "a.jsonl", "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS))
    assert load_labelled_text(source(csv_path)).content_hash() == load_labelled_text(source(jsonl_path)).content_hash()
    changed = write(tmp_path / "b.csv", "text,label\ngood phone,neg\nbad battery,neg\nworks fine,pos\n")
    assert load_labelled_text(source(changed)).content_hash() != load_labelled_text(source(csv_path)).content_hash()


BAD_INPUTS = [
    # (file name, content, message fragments that must all appear)
    ("empty.csv", b"", ["empty.csv", "file is empty"]),
    ("header_only.csv", b"text,label\n", ["header_only.csv", "no data rows"]),
    ("no_label.csv", b"text,score\nfine,1\n", ["no_label.csv", "header (line 1)", "missing column(s) ['label']"]),
    ("empty_text.csv", b"text,label\ngood,pos\n   ,neg\n", ["empty_text.csv", "line 3", "empty or whitespace only"]),
    ("bad_label.csv", b"text,label\ngood,pos\nmeh,neutral\n", ["line 3", "label 'neutral'", "['neg', 'pos']"]),
    ("latin1.csv", "text,label\ngood,pos\ncaf\xe9 ok,pos\n".encode("latin-1"), ["latin1.csv", "line 3", "not valid UTF-8"]),
    ("fields.csv", b"text,label\ngood,pos,extra\n", ["line 2", "expected 2 fields", "found 3"]),
    ("broken.jsonl", b'{"text": "good", "label": "pos"}\n{"text": "bad", \n', ["broken.jsonl", "line 2", "invalid JSON"]),
    ("array.jsonl", b'["good", "pos"]\n', ["line 1", "expected a JSON object, got list"]),
    ("missing.jsonl", b'{"text": "good"}\n', ["line 1", "missing column(s) ['label']"]),
    ("null_text.jsonl", b'{"text": null, "label": "pos"}\n', ["line 1", "'text' is missing or null"]),
    ("number_text.jsonl", b'{"text": 5, "label": "pos"}\n', ["line 1", "must be text, got int"]),
    ("not_parquet.parquet", b"this is not parquet", ["not_parquet.parquet", "not a readable Parquet file"]),
]


@pytest.mark.parametrize(("name", "content", "fragments"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_file_location_and_rule(tmp_path: Path, name: str, content: bytes, fragments: list[str]) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataValidationError) as caught:
        load_labelled_text(source(path))
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert caught.value.path == str(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"(?s)nowhere.csv: 1 problem.*file not found"):
        load_labelled_text(source(tmp_path / "nowhere.csv"))


def test_every_bad_row_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = write(tmp_path / "many.csv", "text,label\n" + "".join(f"row {i},maybe\n" for i in range(30)))
    with pytest.raises(DataValidationError) as caught:
        load_labelled_text(source(path))
    assert len(caught.value.problems) == 30
    assert "line 31" in caught.value.problems[-1]
    assert "... and 10 more" in str(caught.value)


def test_parquet_null_label_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"], "label": ["pos", None]}), path)
    with pytest.raises(DataValidationError, match="row 2: column 'label' is missing or null"):
        load_labelled_text(source(path))


def test_duplicates_and_conflicts_are_counted_not_silently_dropped(tmp_path: Path) -> None:
    content = "text,label\ngood,pos\ngood,pos\ngood,pos\nfine,pos\nfine,neg\nbad,neg\n"
    dataset = load_labelled_text(source(write(tmp_path / "dups.csv", content)))
    assert dataset.rows_read == 6
    assert dataset.texts == ("good", "bad")
    assert dataset.duplicates.exact_duplicates == 2
    assert dataset.duplicates.conflicting_texts == 1
    assert dataset.duplicates.conflicting_rows == 2
    assert dataset.duplicates.examples == ("fine",)


def test_all_rows_conflicting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="every row was dropped as a conflicting duplicate"):
        load_labelled_text(source(write(tmp_path / "c.csv", "text,label\nx,pos\nx,neg\n")))


SOURCE_ERRORS = [
    ({"format": "xml"}, "DatasetSource.format must be one of"),
    ({"text_column": "label"}, "text_column and label_column must differ"),
    ({"format": "csv", "header": False, "column_names": ("sentence", "label")}, "must name ['text']"),
]


@pytest.mark.parametrize(("kwargs", "message"), SOURCE_ERRORS)
def test_bad_source_settings_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        source(tmp_path / "x.csv", **kwargs)


def test_unknown_suffix_asks_for_a_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot infer the format of .*'\.xlsx'"):
        _ = source(tmp_path / "x.xlsx").resolved_format


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [(("a",), (), "at least 2 classes"), (("a", "a"), (), "must be unique"), (("a", "b"), ("x",), "one name per label")],
)
def test_bad_label_schema_is_refused(labels: tuple[str, ...], names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelSchema(labels=labels, names=names)


@pytest.mark.parametrize(
    ("domain", "rows", "kept", "duplicates"),
    [("amazon", 1000, 990, 10), ("yelp", 1000, 996, 4), ("imdb", 1000, 997, 3)],
)
def test_bundled_domains_load_with_their_known_duplicates(domain: str, rows: int, kept: int, duplicates: int) -> None:
    dataset = load_labelled_text(bundled_source(domain))
    assert (dataset.rows_read, len(dataset), dataset.duplicates.exact_duplicates) == (rows, kept, duplicates)
    assert dataset.duplicates.conflicting_texts == 0
    assert set(BUNDLED_DOMAINS) == {"amazon", "yelp", "imdb"}


def test_unknown_bundled_domain_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown bundled domain 'twitter'; choose one of \['amazon', 'imdb', 'yelp'\]"):
        bundled_source("twitter")


def test_file_uri_is_read_and_other_schemes_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\ngood,pos\nbad,neg\n")
    assert len(load_labelled_text(DatasetSource(path=path.as_uri(), schema=SCHEMA))) == 2
    with pytest.raises(ValueError, match=r"uses the s3:// scheme; give a local path or a file:// URI"):
        DatasetSource(path="s3://bucket/d.csv", schema=SCHEMA)
