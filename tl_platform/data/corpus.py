"""Unlabelled in-domain text for domain-adaptive pretraining: read within bounds, de-duplicated, counted.

What is read, by extension (a folder is read recursively, by the same rules):

- ``.txt``: UTF-8 text; one document per line (``text_unit="line"``, blank lines are not documents), or per
  paragraph (``text_unit="paragraph"``: consecutive non-blank lines, joined by a space).
- ``.csv`` / ``.tsv``: UTF-8 with a header row; the document is the column named ``text_column``
  (CSV follows RFC 4180 quoting; TSV is taken as-is, without quoting).
- ``.jsonl`` / ``.ndjson``: one JSON object per line; the document is its string field ``text_column``.
- ``.parquet``: the string column ``text_column``.

In a folder, files with other extensions, hidden files and folders (names starting with a dot) and symlinked
folders (not followed, so no cycles) are skipped and counted, with the first few named in the report.

Bounds (fields of ``CorpusSource``; defaults in brackets):

- ``max_document_chars`` [20,000]: a longer document is **truncated** to its first that-many characters, and
  counted. Text files are read in bounded pieces, so a line of a gigabyte costs no more memory than the cap.
  The tokenizer keeps only ``max_length`` tokens of a document anyway (128 tokens are about 600 characters).
- A CSV/TSV field or a JSONL line longer than ``MAX_RECORD_CHARS`` (131,072 characters, the csv module's own
  field limit) is **refused**: a record cannot be cut and still parse; put such documents in a ``.txt`` file.
- ``max_documents`` [1,000,000], ``max_total_chars`` [200,000,000] and ``max_files`` [10,000 files and folders
  under a folder] are refused when exceeded, as are folders nested deeper than ``MAX_FOLDER_DEPTH``: the
  message names the limit and the field to raise.

De-duplication is exact after whitespace normalisation (runs of whitespace become one space, ends trimmed;
case is kept), and the kept documents are stored normalised. A document equal to a held-out text is dropped
so that perplexity is measured on text the model never trained on; one equal to an earlier document or to a
labelled training text (trained on anyway) is dropped as a duplicate. Containment is not detected: a paragraph
that contains a held-out sentence is kept.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tl_platform.data.corpus_formats import file_documents
from tl_platform.data.loading import DataValidationError
from tl_platform.validation import require

TextUnit = Literal["line", "paragraph"]
CorpusFormat = Literal["text", "csv", "tsv", "jsonl", "parquet"]
FORMATS: dict[str, CorpusFormat] = {
    ".txt": "text",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
ALLOWED = ", ".join(FORMATS)
MAX_FOLDER_DEPTH = 32
SKIPPED_EXAMPLES = 10


@dataclass(frozen=True)
class CorpusSource:
    """Where the unlabelled corpus is and how to read it (see the module docstring for formats and bounds).

    Attributes:
        path: a corpus file or a folder of them.
        text_column: the column (CSV, TSV, Parquet) or field (JSONL) holding the text.
        text_unit: in ``.txt`` files, ``line`` (one document per line) or ``paragraph`` (blank-line separated).
        max_document_chars: longer documents are truncated to this many characters.
        max_documents: more documents than this (empty ones included) is refused.
        max_total_chars: more characters than this, over all documents after truncation, is refused.
        max_files: more files and folders than this under a folder is refused.
    """

    path: str
    text_column: str = "text"
    text_unit: TextUnit = "line"
    max_document_chars: int = 20_000
    max_documents: int = 1_000_000
    max_total_chars: int = 200_000_000
    max_files: int = 10_000

    def __post_init__(self) -> None:
        require(bool(str(self.path).strip()), "CorpusSource.path must name a corpus file or folder, got an empty path")
        require(bool(self.text_column.strip()), "CorpusSource.text_column must name a column or field, got ''")
        require(
            self.text_unit in ("line", "paragraph"),
            f"CorpusSource.text_unit must be 'line' or 'paragraph', got {self.text_unit!r}",
        )
        require(
            16 <= self.max_document_chars <= 1_000_000,
            f"CorpusSource.max_document_chars must be in [16, 1000000], got {self.max_document_chars}",
        )
        require(
            1 <= self.max_documents <= 100_000_000,
            f"CorpusSource.max_documents must be in [1, 100000000], got {self.max_documents}",
        )
        require(
            self.max_document_chars <= self.max_total_chars <= 10_000_000_000,
            f"CorpusSource.max_total_chars must be in [max_document_chars, 1e10], got {self.max_total_chars}",
        )
        require(1 <= self.max_files <= 10_000_000, f"CorpusSource.max_files must be in [1, 10000000], got {self.max_files}")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CorpusReport:
    """What reading the corpus found. ``documents_read`` = kept + empty + duplicates + in_training_texts +
    overlapping_heldout."""

    source: str
    files_read: int
    documents_read: int
    kept: int
    empty: int
    duplicates: int
    in_training_texts: int
    overlapping_heldout: int
    truncated: int
    empty_files: int
    skipped_files: int
    skipped_examples: tuple[str, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        return {
            "files_read": self.files_read,
            "documents_read": self.documents_read,
            "kept": self.kept,
            "empty": self.empty,
            "duplicates": self.duplicates,
            "in_training_texts": self.in_training_texts,
            "overlapping_heldout": self.overlapping_heldout,
            "truncated": self.truncated,
            "empty_files": self.empty_files,
            "skipped_files": self.skipped_files,
        }


@dataclass(frozen=True)
class UnlabelledCorpus:
    """De-duplicated, whitespace-normalised documents, in the order read, and the report of how they were read."""

    texts: tuple[str, ...]
    report: CorpusReport

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode())
            digest.update(b"\n")
        return digest.hexdigest()


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def load_corpus(
    source: CorpusSource, heldout_texts: Iterable[str] = (), training_texts: Iterable[str] = ()
) -> UnlabelledCorpus:
    """Read the corpus at ``source.path``; drop empty documents, duplicates and held-out texts; count each."""
    root = Path(source.path).expanduser()
    if not root.exists():
        raise DataValidationError(root, [f"path not found; give a corpus file ({ALLOWED}) or a folder of them"])
    if root.is_dir():
        listing = _list_folder(root, source.max_files)
        if not listing.files:
            raise DataValidationError(
                root, [f"no corpus files ({ALLOWED}) in this folder{_skipped_note(listing.skipped, listing.examples)}"]
            )
    else:
        if _format_of(root) is None:
            raise DataValidationError(root, [f"unknown extension {root.suffix!r}; corpus files are {ALLOWED}"])
        if root.stat().st_size == 0:
            raise DataValidationError(root, ["file is empty: expected at least one document"])
        listing = _Listing(files=[root])

    heldout = {normalise_whitespace(t) for t in heldout_texts}
    training = {normalise_whitespace(t) for t in training_texts}
    counts = dict.fromkeys(("read", "empty", "duplicates", "in_training", "heldout", "truncated", "chars", "empty_files"), 0)
    kept: dict[str, None] = {}  # insertion-ordered set
    for path in listing.files:
        if path.stat().st_size == 0:
            counts["empty_files"] += 1
            continue
        for location, raw in file_documents(path, _known_format(path), source):
            counts["read"] += 1
            if counts["read"] > source.max_documents:
                raise DataValidationError(
                    path, [(f"{location}: the corpus holds more than {source.max_documents:,} documents "
                           "(CorpusSource.max_documents); raise it or give a smaller corpus")]
                )
            if len(raw) > source.max_document_chars:
                raw = raw[: source.max_document_chars]
                counts["truncated"] += 1
            counts["chars"] += len(raw)
            if counts["chars"] > source.max_total_chars:
                raise DataValidationError(
                    path, [(f"{location}: the corpus holds more than {source.max_total_chars:,} characters "
                           "(CorpusSource.max_total_chars); raise it or give a smaller corpus")]
                )
            text = normalise_whitespace(raw)
            if not text:
                counts["empty"] += 1
            elif text in heldout:
                counts["heldout"] += 1
            elif text in training:
                counts["in_training"] += 1
            elif text in kept:
                counts["duplicates"] += 1
            else:
                kept[text] = None
    if counts["read"] == counts["empty"]:
        raise DataValidationError(root, ["no non-empty documents: every file was empty or blank"])
    report = CorpusReport(
        source=str(root),
        files_read=len(listing.files) - counts["empty_files"],
        documents_read=counts["read"],
        kept=len(kept),
        empty=counts["empty"],
        duplicates=counts["duplicates"],
        in_training_texts=counts["in_training"],
        overlapping_heldout=counts["heldout"],
        truncated=counts["truncated"],
        empty_files=counts["empty_files"],
        skipped_files=listing.skipped,
        skipped_examples=tuple(listing.examples),
    )
    return UnlabelledCorpus(texts=tuple(kept), report=report)


def _known_format(path: Path) -> CorpusFormat:
    found = _format_of(path)
    if found is None:  # listings keep only known extensions; a file renamed while being read ends here
        raise DataValidationError(path, [f"not a corpus file: the extension must be one of {ALLOWED}"])
    return found


def _format_of(path: Path) -> CorpusFormat | None:
    return FORMATS.get(path.suffix.lower())


@dataclass
class _Listing:
    files: list[Path]
    skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def skip(self, name: str, why: str) -> None:
        self.skipped += 1
        if len(self.examples) < SKIPPED_EXAMPLES:
            self.examples.append(f"{name} ({why})")


def _list_folder(root: Path, max_files: int) -> _Listing:
    """Corpus files under ``root`` in a stable order (a folder's files by name, then its sub-folders by name)."""
    listing = _Listing(files=[])
    looked_at = 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        entries: list[os.DirEntry[str]] = []
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    looked_at += 1
                    if looked_at > max_files:
                        raise DataValidationError(
                            root, [(f"more than {max_files:,} files and folders under this folder "
                                   "(CorpusSource.max_files); raise it or point at a smaller folder")]
                        )
                    entries.append(entry)
        except OSError as err:
            raise DataValidationError(folder, [f"cannot list this folder ({err.strerror})"]) from err
        folders: list[Path] = []
        for entry in sorted(entries, key=lambda e: e.name):
            name = os.path.relpath(entry.path, root)
            if entry.name.startswith("."):
                listing.skip(name, "hidden")
            elif entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif entry.is_dir():
                listing.skip(name, "symlinked folder, not followed")
            elif not entry.is_file():
                listing.skip(name, "not a regular file")
            elif _format_of(Path(entry.name)) is None:
                listing.skip(name, f"extension not read; corpus files are {ALLOWED}")
            else:
                listing.files.append(Path(entry.path))
        if folders and depth + 1 > MAX_FOLDER_DEPTH:
            raise DataValidationError(
                root, [(f"folders nest more than {MAX_FOLDER_DEPTH} levels deep (at {os.path.relpath(folders[0], root)}); "
                       "point at a shallower folder")]
            )
        stack.extend((sub, depth + 1) for sub in reversed(folders))
    return listing


def _skipped_note(skipped: int, examples: list[str]) -> str:
    if not skipped:
        return ""
    return f"; skipped {skipped} other file(s): " + ", ".join(examples) + (", ..." if skipped > len(examples) else "")
