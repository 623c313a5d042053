"""Schemas of labelled text data and the in-memory dataset they produce."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DataFormat = Literal["csv", "tsv", "jsonl", "parquet"]
DATA_FORMATS: tuple[DataFormat, ...] = ("csv", "tsv", "jsonl", "parquet")
_SUFFIX_FORMATS: dict[str, DataFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class LabelSchema:
    """The label set of a classification task.

    Attributes:
        labels: the raw label values as they appear in the data (compared as strings), in class-index order.
        names: human-readable class names, one per label; defaults to the raw values.
    """

    labels: tuple[str, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ValueError(f"LabelSchema.labels needs at least 2 classes, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"LabelSchema.labels must be unique, got {list(self.labels)}")
        if not self.names:
            object.__setattr__(self, "names", tuple(self.labels))
        if len(self.names) != len(self.labels):
            raise ValueError(
                f"LabelSchema.names has {len(self.names)} entries but labels has {len(self.labels)}; "
                "give one name per label or none"
            )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def index_of(self, raw: str) -> int:
        return self.labels.index(raw)

    def to_json(self) -> dict[str, list[str]]:
        return {"labels": list(self.labels), "names": list(self.names)}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> LabelSchema:
        return cls(labels=tuple(data["labels"]), names=tuple(data.get("names", ())))


@dataclass(frozen=True)
class DatasetSource:
    """Where labelled text lives and how to read it.

    Attributes:
        path: a local file path or ``file://`` URI.
        schema: the label set; values outside it are rejected with the row that carries them.
        text_column: name of the text column.
        label_column: name of the label column.
        format: one of csv, tsv, jsonl, parquet; inferred from the file suffix when omitted.
        header: whether a csv/tsv file starts with a header row. Without one, ``column_names`` names the columns.
        column_names: names of the columns of a header-less csv/tsv file, in file order.
    """

    path: str
    schema: LabelSchema
    text_column: str = "text"
    label_column: str = "label"
    format: DataFormat | None = None
    header: bool = True
    column_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        scheme = self.path.split("://", 1)[0] if "://" in self.path else None
        if scheme is not None and scheme != "file":
            raise ValueError(
                f"DatasetSource.path {self.path!r} uses the {scheme}:// scheme; give a local path or a file:// URI "
                "(copy remote data to local storage first)"
            )
        if self.format is not None and self.format not in DATA_FORMATS:
            raise ValueError(f"DatasetSource.format must be one of {list(DATA_FORMATS)}, got {self.format!r}")
        if self.text_column == self.label_column:
            raise ValueError("DatasetSource.text_column and label_column must differ")
        if not self.header and self.resolved_format in ("csv", "tsv"):
            missing = {self.text_column, self.label_column} - set(self.column_names)
            if missing:
                raise ValueError(
                    f"DatasetSource.column_names {list(self.column_names)} must name {sorted(missing)} "
                    "when header=False"
                )

    @property
    def local_path(self) -> Path:
        return Path(self.path.removeprefix("file://"))

    @property
    def resolved_format(self) -> DataFormat:
        if self.format is not None:
            return self.format
        suffix = self.local_path.suffix.lower()
        if suffix not in _SUFFIX_FORMATS:
            raise ValueError(
                f"cannot infer the format of {self.path!r} from its suffix {suffix!r}; "
                f"set format to one of {list(DATA_FORMATS)} or use one of {sorted(_SUFFIX_FORMATS)}"
            )
        return _SUFFIX_FORMATS[suffix]


@dataclass(frozen=True)
class DuplicateReport:
    """What loading found and did about repeated texts; nothing is dropped without being counted here.

    Attributes:
        exact_duplicates: rows whose (text, label) repeats an earlier row; the later copies were dropped.
        conflicting_texts: distinct texts that appear with more than one label; every row of them was dropped.
        conflicting_rows: rows dropped because their text is conflicting.
        examples: up to five conflicting texts, for the report.
    """

    exact_duplicates: int
    conflicting_texts: int
    conflicting_rows: int
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelledDataset:
    """Validated labelled text: ``labels`` hold class indices into ``schema.labels``."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    schema: LabelSchema
    source: str
    rows_read: int
    duplicates: DuplicateReport

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.schema.names, 0)
        for label in self.labels:
            counts[self.schema.names[label]] += 1
        return counts

    def subset(self, indices: Sequence[int]) -> LabelledDataset:
        return LabelledDataset(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            schema=self.schema,
            source=self.source,
            rows_read=len(indices),
            duplicates=DuplicateReport(0, 0, 0),
        )

    def content_hash(self) -> str:
        """SHA-256 of the rows in order, independent of the file format they came from."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.schema.to_json(), sort_keys=True).encode())
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(json.dumps([text, self.schema.labels[label]], ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def to_records(self) -> list[dict[str, str]]:
        return [
            {"text": text, "label": self.schema.labels[label]}
            for text, label in zip(self.texts, self.labels, strict=True)
        ]
