"""The unlabelled-corpus loader: every format, de-duplication and its counts, and bad inputs at their worst."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tl_platform.data import CorpusSource, DataValidationError, load_corpus
from tl_platform.data.corpus import MAX_FOLDER_DEPTH
from tl_platform.data.corpus_formats import MAX_RECORD_CHARS


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def load(path: Path, **options: object) -> tuple[tuple[str, ...], dict[str, int]]:
    corpus = load_corpus(CorpusSource(str(path), **options))  # type: ignore[arg-type]
    return corpus.texts, corpus.report.counts()


class TestFormats:
    def test_text_file_is_one_document_per_line_with_whitespace_normalised(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.txt", "The battery  lasts.\n\n   \nGreat\tscreen, poor  speaker \r\nlast line without newline")
        texts, counts = load(path)
        assert texts == ("The battery lasts.", "Great screen, poor speaker", "last line without newline")
        assert counts["documents_read"] == 3 and counts["kept"] == 3 and counts["empty"] == 0  # blank lines are no documents

    def test_text_file_by_paragraph_joins_lines_up_to_a_blank_line(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.txt", "first line\nsecond line\n\n\nnext paragraph\n  \nlast\n")
        texts, counts = load(path, text_unit="paragraph")
        assert texts == ("first line second line", "next paragraph", "last")
        assert counts["documents_read"] == 3

    def test_csv_reads_the_named_column_with_quoting(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.csv", 'id,body,stars\n1,"a review, with a comma",5\n2,"spans\ntwo lines",3\n3,,1\n')
        texts, counts = load(path, text_column="body")
        assert texts == ("a review, with a comma", "spans two lines")
        assert counts["empty"] == 1 and counts["documents_read"] == 3

    def test_tsv_is_taken_as_is(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.tsv", 'text\tlabel\nsaid "wow\t1\nok then\t0\n')
        assert load(path)[0] == ('said "wow', "ok then")

    def test_jsonl_reads_the_named_field_and_skips_blank_lines(self, tmp_path: Path) -> None:
        path = write(tmp_path / "c.ndjson", '{"review": "one", "x": 1}\n\n{"review": "two"}\n')
        assert load(path, text_column="review")[0] == ("one", "two")

    def test_parquet_reads_plain_and_dictionary_encoded_strings(self, tmp_path: Path) -> None:
        pq.write_table(pa.table({"text": ["alpha", "beta", "alpha"], "n": [1, 2, 3]}), tmp_path / "plain.parquet")
        texts, counts = load(tmp_path / "plain.parquet")
        assert texts == ("alpha", "beta") and counts["duplicates"] == 1
        dictionary = pa.array(["gamma", "delta"]).dictionary_encode()
        pq.write_table(pa.table({"text": dictionary}), tmp_path / "dict.parquet")
        assert load(tmp_path / "dict.parquet")[0] == ("gamma", "delta")

    def test_a_folder_is_read_recursively_in_a_stable_order_and_reports_what_it_skipped(self, tmp_path: Path) -> None:
        root = tmp_path / "corpus"
        write(root / "b.txt", "from b\n")
        write(root / "a.csv", "text\nfrom a\n")
        write_jsonl(root / "sub" / "deeper" / "c.jsonl", [{"text": "from c"}])
        write(root / "sub" / "README.md", "# not corpus\n")
        write(root / ".hidden" / "x.txt", "hidden\n")
        write(root / "sub" / "empty.txt", "")
        (root / "loop").symlink_to(root, target_is_directory=True)  # not followed: no cycle
        corpus = load_corpus(CorpusSource(str(root)))
        assert corpus.texts == ("from a", "from b", "from c")  # a folder's files by name, then its sub-folders
        report = corpus.report
        assert (report.files_read, report.empty_files, report.skipped_files) == (3, 1, 3)
        assert report.skipped_examples == (
            ".hidden (hidden)",
            "loop (symlinked folder, not followed)",
            f"sub{os.sep}README.md (extension not read; corpus files are .txt, .csv, .tsv, .jsonl, .ndjson, .parquet)",
        )


class TestDeduplication:
    def test_exact_duplicates_after_whitespace_normalisation_heldout_and_training_overlap_are_counted(
        self, tmp_path: Path
    ) -> None:
        path = write(
            tmp_path / "c.txt",
            "Good phone.\nGood  phone.\ngood phone.\nIt broke   after a week.\nWorks fine\nNew text\n\t\n",
        )
        corpus = load_corpus(
            CorpusSource(str(path)),
            heldout_texts=["It broke after a week.", "unrelated"],
            training_texts=[" Works fine "],
        )
        assert corpus.texts == ("Good phone.", "good phone.", "New text")  # case is kept: exact match only
        counts = corpus.report.counts()
        assert counts == {
            "files_read": 1, "documents_read": 6, "kept": 3, "empty": 0, "duplicates": 1, "in_training_texts": 1,
            "overlapping_heldout": 1, "truncated": 0, "empty_files": 0, "skipped_files": 0,
        }
        read = counts["kept"] + counts["empty"] + counts["duplicates"] + counts["in_training_texts"]
        assert read + counts["overlapping_heldout"] == counts["documents_read"]

    def test_duplicates_across_files_of_a_folder_are_dropped(self, tmp_path: Path) -> None:
        write(tmp_path / "one.txt", "same text\nonly here\n")
        write_jsonl(tmp_path / "two.jsonl", [{"text": "same   text"}])
        texts, counts = load(tmp_path)
        assert texts == ("same text", "only here") and counts["duplicates"] == 1

    def test_the_content_hash_follows_the_kept_texts(self, tmp_path: Path) -> None:
        first = load_corpus(CorpusSource(str(write(tmp_path / "a.txt", "x y\nz\n"))))
        same = load_corpus(CorpusSource(str(write(tmp_path / "b.txt", "x   y\nz\nz\n"))))
        other = load_corpus(CorpusSource(str(write(tmp_path / "c.txt", "z\nx y\n"))))
        assert first.content_hash() == same.content_hash() != other.content_hash()


BAD_INPUTS = [
    # (file name, content, options, message pattern)
    ("c.json", '{"text": "x"}', {}, r"c\.json: 1 problem.*unknown extension '\.json'; corpus files are \.txt, \.csv"),
    ("c.txt", "", {}, r"c\.txt.*file is empty: expected at least one document"),
    ("c.txt", "\n  \n\t\n", {}, r"no non-empty documents"),
    ("c.csv", "id,body\n1,x\n", {}, r"c\.csv.*header \(line 1\): no column 'text'; found \['id', 'body'\]"),
    ("c.csv", "text,n\nok,1\nextra,2,3\n", {}, r"line 3: expected 2 fields like the header, found 3"),
    ("c.csv", 'text\n"unterminated\n', {}, r"malformed CSV"),
    ("c.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n', {}, r"c\.jsonl.*line 3: invalid JSON"),
    ("c.jsonl", '{"text": "a"}\n["text"]\n', {}, r"line 2: expected a JSON object, got list"),
    ("c.jsonl", '{"body": "a"}\n', {}, r"line 1: no field 'text'; found \['body'\]"),
    ("c.jsonl", '{"text": 5}\n', {}, r"line 1: field 'text' must be a string, got int"),
    ("c.jsonl", '{"text": null}\n', {}, r"line 1: field 'text' must be a string, got null"),
    ("c.jsonl", '{"text": ["a"]}\n', {}, r"line 1: field 'text' must be a string, got list"),
    ("c.txt", "fine\n" * 11, {"max_documents": 10}, r"line 11: the corpus holds more than 10 documents \(CorpusSource\.max_documents\)"),
    ("c.txt", ("x" * 60 + "\n") * 3, {"max_document_chars": 60, "max_total_chars": 150}, r"line 3: the corpus holds more than 150 characters \(CorpusSource\.max_total_chars\)"),
]


@pytest.mark.parametrize(("name", "content", "options", "message"), BAD_INPUTS)
def test_bad_text_inputs_name_the_file_and_the_rule(
    tmp_path: Path, name: str, content: str, options: dict[str, object], message: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataValidationError, match="(?s)" + message) as caught:
        load(path, **options)
    assert caught.value.path == str(path)


def test_a_missing_path_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"(?s)nowhere: 1 problem.*path not found; give a corpus file \(\.txt, .*\) or a folder"):
        load(tmp_path / "nowhere")


def test_an_empty_folder_and_a_folder_without_corpus_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match=r"(?s)empty: 1 problem.*no corpus files \(\.txt, .*\) in this folder$"):
        load(tmp_path / "empty")
    write(tmp_path / "other" / "notes.md", "x")
    write(tmp_path / "other" / "data.json", "{}")
    with pytest.raises(DataValidationError, match=r"(?s)no corpus files .* in this folder; skipped 2 other file\(s\): data\.json .*notes\.md"):
        load(tmp_path / "other")


class TestBinaryAndEncoding:
    def test_binary_junk_is_refused_by_its_nul_bytes(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.txt"
        path.write_bytes(b"ok line\n" + bytes(range(256)) * 4)
        with pytest.raises(DataValidationError, match=r"(?s)junk\.txt.*NUL byte at offset 8: this looks like a binary"):
            load(path)

    def test_invalid_utf8_names_the_line(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.txt"
        path.write_bytes("fine\nalso fine\ncaf\u00e9 au lait\n".encode("latin-1"))
        with pytest.raises(DataValidationError, match=r"(?s)line 3: bytes at offset 18 are not valid UTF-8 .*must be saved as UTF-8"):
            load(path)

    def test_invalid_utf8_far_into_a_file_names_its_line(self, tmp_path: Path) -> None:
        path = tmp_path / "long.txt"
        good = "a fine sentence of text\n" * 20_000  # 480,000 bytes: past the decoder's read-ahead
        path.write_bytes(good.encode() + b"broken \xe9 here\n" + b"after\n")
        with pytest.raises(DataValidationError, match=r"line 20001: bytes at offset 480007 are not valid UTF-8"):
            load(path)

    def test_a_binary_file_inside_a_folder_names_that_file(self, tmp_path: Path) -> None:
        write(tmp_path / "a.txt", "good\n")
        (tmp_path / "b.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        with pytest.raises(DataValidationError, match=r"(?s)b\.jsonl: 1 problem.*NUL byte at offset 8"):
            load(tmp_path)

    def test_binary_junk_named_parquet_is_not_a_readable_parquet_file(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.parquet"
        path.write_bytes(os.urandom(2048))
        with pytest.raises(DataValidationError, match=r"(?s)junk\.parquet.*not a readable Parquet file"):
            load(path)


class TestParquetRules:
    def test_a_column_of_numbers_is_refused_with_its_type(self, tmp_path: Path) -> None:
        pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
        with pytest.raises(DataValidationError, match=r"column 'text' must hold strings, got int64"):
            load(tmp_path / "n.parquet")

    def test_a_null_cell_names_its_row(self, tmp_path: Path) -> None:
        pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "n.parquet")
        with pytest.raises(DataValidationError, match=r"row 2: column 'text' is null"):
            load(tmp_path / "n.parquet")

    def test_a_missing_column_lists_the_columns(self, tmp_path: Path) -> None:
        pq.write_table(pa.table({"body": ["a"]}), tmp_path / "n.parquet")
        with pytest.raises(DataValidationError, match=r"schema: no column 'text'; found \['body'\]"):
            load(tmp_path / "n.parquet")

    def test_too_many_rows_are_refused_from_the_metadata_before_reading(self, tmp_path: Path) -> None:
        pq.write_table(pa.table({"text": [f"row {i}" for i in range(50)]}), tmp_path / "n.parquet")
        with pytest.raises(DataValidationError, match=r"50 rows, more than 20 documents \(CorpusSource\.max_documents\)"):
            load(tmp_path / "n.parquet", max_documents=20)


class TestAtTheirWorst:
    def test_a_huge_line_is_truncated_in_bounded_memory(self, tmp_path: Path) -> None:
        path = tmp_path / "huge.txt"
        with path.open("w", encoding="utf-8") as stream:
            stream.write("short first\n")
            stream.write("word " * 4_000_000)  # one 20 MB line
            stream.write("\nshort last\n")
        tracemalloc.start()
        started = time.perf_counter()
        corpus = load_corpus(CorpusSource(str(path), max_document_chars=1_000))
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert [len(t) for t in corpus.texts] == [11, 999, 10]  # 1,000 characters, trailing space normalised away
        assert corpus.report.truncated == 1 and corpus.report.documents_read == 3
        assert peak < 4_000_000, f"peak {peak:,} bytes: the 20 MB line was held in memory"
        assert seconds < 10

    def test_a_huge_paragraph_is_truncated(self, tmp_path: Path) -> None:
        path = write(tmp_path / "p.txt", "intro\n\n" + ("many words here\n" * 10_000) + "\nend\n")
        corpus = load_corpus(CorpusSource(str(path), text_unit="paragraph", max_document_chars=100))
        assert [len(t) for t in corpus.texts] == [5, 100, 3] and corpus.report.truncated == 1

    def test_a_long_value_in_a_record_is_truncated(self, tmp_path: Path) -> None:
        path = write_jsonl(tmp_path / "c.jsonl", [{"text": "y" * 5_000}, {"text": "short"}])
        corpus = load_corpus(CorpusSource(str(path), max_document_chars=100))
        assert [len(t) for t in corpus.texts] == [100, 5] and corpus.report.truncated == 1

    @pytest.mark.parametrize(
        ("name", "content"),
        [
            ("c.jsonl", '{"text": "ok"}\n{"text": "ok too"}\n' + json.dumps({"text": "z" * MAX_RECORD_CHARS}) + "\n"),
            ("c.csv", "text\nok\n" + "z" * (MAX_RECORD_CHARS + 1) + "\nafter\n"),
        ],
    )
    def test_a_record_over_the_record_limit_is_refused_with_its_line(self, tmp_path: Path, name: str, content: str) -> None:
        path = write(tmp_path / name, content)
        with pytest.raises(DataValidationError, match=r"(?s)line 3 is longer than 131,072 characters.*put long documents in a \.txt file"):
            load(path)

    def test_many_files_are_read_and_too_many_are_refused(self, tmp_path: Path) -> None:
        root = tmp_path / "many"
        for i in range(300):
            write(root / f"part{i // 100}" / f"doc{i:03d}.txt", f"document number {i}\n")
        texts, counts = load(root)
        assert counts["files_read"] == 300 and texts[0] == "document number 0" and texts[-1] == "document number 299"
        with pytest.raises(DataValidationError, match=r"(?s)many: 1 problem.*more than 250 files and folders under this folder \(CorpusSource\.max_files\)"):
            load(root, max_files=250)

    def test_a_deep_folder_is_read_to_the_depth_limit_and_refused_beyond(self, tmp_path: Path) -> None:
        shallow = tmp_path / "shallow"
        write(shallow.joinpath(*["d"] * MAX_FOLDER_DEPTH) / "bottom.txt", "at the bottom\n")
        assert load(shallow)[0] == ("at the bottom",)
        deep = tmp_path / "deep"
        write(deep.joinpath(*["d"] * (MAX_FOLDER_DEPTH + 1)) / "bottom.txt", "too deep\n")
        with pytest.raises(DataValidationError, match=rf"folders nest more than {MAX_FOLDER_DEPTH} levels deep"):
            load(deep)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"text_unit": "sentence"}, r"CorpusSource\.text_unit must be 'line' or 'paragraph', got 'sentence'"),
        ({"max_document_chars": 5}, r"CorpusSource\.max_document_chars must be in \[16, 1000000\], got 5"),
        ({"max_documents": 0}, r"CorpusSource\.max_documents must be in \[1, 100000000\], got 0"),
        ({"max_files": 0}, r"CorpusSource\.max_files must be in \[1, 10000000\], got 0"),
        ({"text_column": " "}, r"CorpusSource\.text_column must name a column or field"),
        ({"max_total_chars": 10}, r"CorpusSource\.max_total_chars must be in \[max_document_chars, 1e10\], got 10"),
    ],
)
def test_corpus_source_names_the_bad_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CorpusSource("corpus.txt", **options)  # type: ignore[arg-type]
