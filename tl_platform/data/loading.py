"""Load labelled text from CSV, TSV, JSONL or Parquet, naming the file, row and rule of every problem."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tl_platform.data.schema import DatasetSource, DuplicateReport, LabelledDataset

MAX_REPORTED_PROBLEMS = 20


class DataValidationError(ValueError):
    """Raised when a data file breaks its schema; the message lists each problem with its location."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        lines = "\n".join(f"  - {p}" for p in shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{self.path}: {len(problems)} problem(s)\n{lines}{tail}")


@dataclass(frozen=True)
class _RawRow:
    location: str  # "line 12" or "row 12", 1-based, as a person would look it up
    text: object
    label: object


def load_labelled_text(source: DatasetSource) -> LabelledDataset:
    """Read, validate and de-duplicate a labelled text file.

    Every row is checked (text present and non-empty, label inside the schema) and all problems are reported
    together. Exact duplicate rows are collapsed to their first occurrence and texts seen with conflicting
    labels are dropped; both are counted in ``LabelledDataset.duplicates``.
    """
    path = source.local_path
    if not path.is_file():
        raise DataValidationError(path, ["file not found (give a path to a csv, tsv, jsonl or parquet file)"])
    if path.stat().st_size == 0:
        raise DataValidationError(path, ["file is empty: expected at least one labelled row"])

    rows = list(_read_rows(source, path))
    if not rows:
        raise DataValidationError(path, ["file has no data rows: expected at least one labelled row"])

    problems: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    allowed = list(source.schema.labels)
    for row in rows:
        text = row.text
        if text is None or (isinstance(text, float) and math.isnan(text)):
            problems.append(f"{row.location}: column {source.text_column!r} is missing or null")
            continue
        if not isinstance(text, str):
            problems.append(f"{row.location}: column {source.text_column!r} must be text, got {type(text).__name__}")
            continue
        if not text.strip():
            problems.append(f"{row.location}: column {source.text_column!r} is empty or whitespace only")
            continue
        raw_label = _label_str(row.label)
        if raw_label is None:
            problems.append(f"{row.location}: column {source.label_column!r} is missing or null")
            continue
        if raw_label not in allowed:
            problems.append(f"{row.location}: label {raw_label!r} is not in the schema's label set {allowed}")
            continue
        texts.append(text.strip())
        labels.append(source.schema.index_of(raw_label))
    if problems:
        raise DataValidationError(path, problems)

    kept_texts, kept_labels, report = resolve_duplicates(texts, labels)
    if not kept_texts:
        raise DataValidationError(path, ["every row was dropped as a conflicting duplicate"])
    return LabelledDataset(
        texts=tuple(kept_texts),
        labels=tuple(kept_labels),
        schema=source.schema,
        source=str(path),
        rows_read=len(rows),
        duplicates=report,
    )


def _label_str(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataValidationError(
            path,
            [
                (f"line {line}: bytes {raw[err.start:err.end]!r} at offset {err.start} are not valid UTF-8 "
                "(save the file as UTF-8)")
            ],
        ) from err


def _read_rows(source: DatasetSource, path: Path) -> Iterator[_RawRow]:
    fmt = source.resolved_format
    if fmt == "parquet":
        yield from _read_parquet(source, path)
        return
    text = _decode(path)
    if fmt == "jsonl":
        yield from _read_jsonl(source, path, text)
    else:
        yield from _read_delimited(source, path, text, "\t" if fmt == "tsv" else ",")


def jsonl_object(path: Path, number: int, line: str) -> dict[str, object]:
    """One JSONL line as an object; anything else is refused naming the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataValidationError(path, [f"line {number}: invalid JSON ({err.msg} at column {err.colno})"]) from err
    if not isinstance(record, dict):
        kind = "null" if record is None else type(record).__name__
        raise DataValidationError(path, [f"line {number}: expected a JSON object, got {kind}"])
    return record


def _read_jsonl(source: DatasetSource, path: Path, text: str) -> Iterator[_RawRow]:
    # Split on "\n" only: str.splitlines() also breaks on U+0085 and friends, which occur inside sentences.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        record = jsonl_object(path, number, line)
        _require_columns(path, f"line {number}", record.keys(), source)
        yield _RawRow(f"line {number}", record[source.text_column], record[source.label_column])


def _read_delimited(source: DatasetSource, path: Path, text: str, delimiter: str) -> Iterator[_RawRow]:
    # newline="" keeps csv's own line handling, which breaks on \r and \n only, never on U+0085.
    # TSV is taken as-is (the bundled data has unbalanced quotes inside sentences); CSV follows RFC 4180 quoting.
    stream = io.StringIO(text, newline="")
    if delimiter == "\t":
        reader = csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
    try:
        if source.header:
            columns = next(reader, None)
            if columns is None:
                return
            columns = [c.strip() for c in columns]
            _require_columns(path, "header (line 1)", columns, source)
        else:
            columns = list(source.column_names)
        text_at, label_at = columns.index(source.text_column), columns.index(source.label_column)
        for fields in reader:
            number = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(columns):
                raise DataValidationError(
                    path, [f"line {number}: expected {len(columns)} fields {columns}, found {len(fields)}"]
                )
            yield _RawRow(f"line {number}", fields[text_at], fields[label_at])
    except csv.Error as err:
        raise DataValidationError(path, [f"line {reader.line_num}: malformed {source.resolved_format} ({err})"]) from err


def _read_parquet(source: DatasetSource, path: Path) -> Iterator[_RawRow]:
    import pyarrow.parquet as pq  # heavy; only Parquet sources pay for it

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for an unreadable file
        raise DataValidationError(path, [f"not a readable Parquet file ({err})"]) from err
    _require_columns(path, "schema", table.column_names, source)
    texts = table.column(source.text_column).to_pylist()
    labels = table.column(source.label_column).to_pylist()
    for index, (text, label) in enumerate(zip(texts, labels, strict=True), start=1):
        yield _RawRow(f"row {index}", text, label)


def _require_columns(path: Path, where: str, present: object, source: DatasetSource) -> None:
    names = list(present)  # type: ignore[call-overload]
    missing = [c for c in (source.text_column, source.label_column) if c not in names]
    if missing:
        raise DataValidationError(path, [f"{where}: missing column(s) {missing}; found {names}"])


def resolve_duplicates(texts: list[str], labels: list[int]) -> tuple[list[str], list[int], DuplicateReport]:
    labels_of: dict[str, set[int]] = defaultdict(set)
    for text, label in zip(texts, labels, strict=True):
        labels_of[text].add(label)
    conflicting = {text for text, seen in labels_of.items() if len(seen) > 1}
    row_counts = Counter(texts)
    kept_texts: list[str] = []
    kept_labels: list[int] = []
    seen: set[str] = set()
    exact = 0
    for text, label in zip(texts, labels, strict=True):
        if text in conflicting:
            continue
        if text in seen:
            exact += 1
            continue
        seen.add(text)
        kept_texts.append(text)
        kept_labels.append(label)
    report = DuplicateReport(
        exact_duplicates=exact,
        conflicting_texts=len(conflicting),
        conflicting_rows=sum(row_counts[t] for t in conflicting),
        examples=tuple(sorted(conflicting)[:5]),
    )
    return kept_texts, kept_labels, report
