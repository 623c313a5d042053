"""Reading one corpus file's documents, format by format: text by line or paragraph, CSV/TSV, JSONL, Parquet.

Every reader is bounded: lines are read a bounded number of characters at a time, a record longer than
``MAX_RECORD_CHARS`` is refused (it could not be cut and still parse), and binary files are refused at the door.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tl_platform.data.loading import DataValidationError, jsonl_object

if TYPE_CHECKING:
    from tl_platform.data.corpus import CorpusFormat, CorpusSource

MAX_RECORD_CHARS = 131_072  # csv.field_size_limit()'s default; also the longest JSONL line read
BINARY_SNIFF_BYTES = 8192


def file_documents(path: Path, fmt: CorpusFormat, source: CorpusSource) -> Iterator[tuple[str, str]]:
    """(location, raw text) of every document of one file; blank text-file lines are no documents."""
    if fmt == "parquet":
        yield from _parquet_documents(path, source)
        return
    _refuse_binary(path)
    with path.open("r", encoding="utf-8-sig", errors="strict") as stream:
        lines = _bounded_lines(path, stream, source.max_document_chars if fmt == "text" else None)
        if fmt == "text" and source.text_unit == "paragraph":
            yield from _paragraphs(lines, source.max_document_chars)
        elif fmt == "text":
            yield from ((f"line {number}", line) for number, line in lines if line.strip())
        elif fmt == "jsonl":
            yield from _jsonl_documents(path, lines, source.text_column)
        else:
            yield from _delimited_documents(path, lines, source.text_column, "\t" if fmt == "tsv" else ",")


def _refuse_binary(path: Path) -> None:
    with path.open("rb") as stream:
        head = stream.read(BINARY_SNIFF_BYTES)
    at = head.find(b"\x00")
    if at >= 0:
        raise DataValidationError(
            path, [f"NUL byte at offset {at}: this looks like a binary (or UTF-16) file; corpus files are UTF-8 text or Parquet"]
        )


def _bounded_lines(path: Path, stream: IO[str], truncate_at: int | None) -> Iterator[tuple[int, str]]:
    """(1-based number, line without its newline), reading at most a bounded number of characters at a time.

    With ``truncate_at`` a longer line comes back cut to ``truncate_at + 1`` characters (one more than the cap,
    so the caller sees that it was longer) and the rest of it is read past in pieces, never held whole; without,
    a line longer than ``MAX_RECORD_CHARS`` is refused.
    """
    limit = truncate_at if truncate_at is not None else MAX_RECORD_CHARS
    number = 0
    try:
        while True:
            piece = stream.readline(limit + 1)
            if not piece:
                return
            number += 1
            if piece.endswith("\n"):
                yield number, piece[:-1]
                continue
            if len(piece) <= limit:  # the last line, without a newline
                yield number, piece
                continue
            if truncate_at is None:
                raise DataValidationError(
                    path, [(f"line {number} is longer than {MAX_RECORD_CHARS:,} characters, the most a record may hold; "
                           "put long documents in a .txt file (one per line), where they are truncated")]
                )
            while True:  # skip the rest of this line
                rest = stream.readline(1 << 16)
                if not rest or rest.endswith("\n"):
                    break
            yield number, piece
    except UnicodeDecodeError as err:
        line, offset = _first_invalid_utf8(path)  # the text layer decodes ahead: find the place in the bytes
        raise DataValidationError(
            path, [(f"line {line}: bytes at offset {offset} are not valid UTF-8 ({err.reason}); "
                   "corpus files must be saved as UTF-8 text")]
        ) from err


def _first_invalid_utf8(path: Path) -> tuple[int, int]:
    """(1-based line, byte offset) of the first byte that is not valid UTF-8, reading in bounded pieces."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    line, offset = 1, 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 16):
            pending = len(decoder.getstate()[0])  # an incomplete character carried over (no newline in it)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                at = max(0, err.start - pending)
                return line + chunk[:at].count(b"\n"), offset + at
            line += chunk.count(b"\n")
            offset += len(chunk)
    return line, offset


def _paragraphs(lines: Iterator[tuple[int, str]], cap: int) -> Iterator[tuple[str, str]]:
    parts: list[str] = []
    size = 0
    first = 0
    for number, line in lines:
        if not line.strip():
            if parts:
                yield f"line {first}", " ".join(parts)
            parts, size = [], 0
            continue
        if not parts:
            first = number
        if size <= cap + 1:  # past the cap the paragraph is truncated anyway (and counted): stop collecting
            parts.append(line)
            size += len(line) + 1
    if parts:
        yield f"line {first}", " ".join(parts)


def _jsonl_documents(path: Path, lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[str, str]]:
    for number, line in lines:
        if not line.strip():
            continue
        record = jsonl_object(path, number, line)
        if name not in record:
            raise DataValidationError(path, [f"line {number}: no field {name!r}; found {sorted(record)[:10]}"])
        value = record[name]
        if not isinstance(value, str):
            raise DataValidationError(path, [f"line {number}: field {name!r} must be a string, got {_json_type(value)}"])
        yield f"line {number}", value


def _json_type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _delimited_documents(path: Path, lines: Iterator[tuple[int, str]], name: str, delimiter: str) -> Iterator[tuple[str, str]]:
    numbers: list[int] = [0]

    def raw() -> Iterator[str]:
        for number, line in lines:
            numbers[0] = number
            yield line + "\n"

    kind = "TSV" if delimiter == "\t" else "CSV"
    if delimiter == "\t":
        reader = csv.reader(raw(), delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(raw(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
    try:
        header = [column.strip() for column in next(reader, [])]
        if name not in header:
            raise DataValidationError(path, [f"header (line 1): no column {name!r}; found {header[:20]}"])
        at = header.index(name)
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataValidationError(
                    path, [f"line {numbers[0]}: expected {len(header)} fields like the header, found {len(fields)}"]
                )
            yield f"line {numbers[0]}", fields[at]
    except csv.Error as err:
        raise DataValidationError(path, [f"line {numbers[0]}: malformed {kind} ({err})"]) from err


def _parquet_documents(path: Path, source: CorpusSource) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq  # heavy; only Parquet corpora pay for it

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several unrelated types for an unreadable file
        raise DataValidationError(path, [f"not a readable Parquet file ({err})"]) from err
    name = source.text_column
    names = parquet.schema_arrow.names
    if name not in names:
        raise DataValidationError(path, [f"schema: no column {name!r}; found {names[:20]}"])
    kind = parquet.schema_arrow.field(name).type
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value_kind) or pa.types.is_large_string(value_kind)):
        raise DataValidationError(path, [f"column {name!r} must hold strings, got {kind}"])
    metadata = parquet.metadata
    if metadata.num_rows > source.max_documents:
        raise DataValidationError(
            path, [(f"{metadata.num_rows:,} rows, more than {source.max_documents:,} documents "
                   "(CorpusSource.max_documents); raise it or give a smaller corpus")]
        )
    at = names.index(name)
    size = sum(metadata.row_group(g).column(at).total_uncompressed_size for g in range(metadata.num_row_groups))
    if size > 4 * source.max_total_chars:  # UTF-8 takes at most 4 bytes a character
        raise DataValidationError(
            path, [(f"column {name!r} holds {size:,} bytes, more than max_total_chars allows "
                   "(CorpusSource.max_total_chars); raise it or give a smaller corpus")]
        )
    row = 0
    try:
        for batch in parquet.iter_batches(columns=[name], batch_size=4096):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    raise DataValidationError(path, [f"row {row}: column {name!r} is null"])
                yield f"row {row}", value
    except (OSError, pa.ArrowException) as err:
        raise DataValidationError(path, [f"row {row + 1}: unreadable Parquet data ({err})"]) from err
