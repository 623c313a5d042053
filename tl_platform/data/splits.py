"""Deterministic stratified train/validation/test splits with a content hash for each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_platform.data.schema import DuplicateReport, LabelledDataset, LabelSchema

SPLIT_NAMES = ("train", "validation", "test")
EVAL_SUITE_SPLITS = ("validation", "test")  # held out from training; every model is judged on them


@dataclass(frozen=True)
class SplitFractions:
    """Shares of each class that go to each split; they must be positive and sum to 1."""

    train: float = 0.7
    validation: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"SplitFractions.{name} must be in (0, 1), got {value}")
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"SplitFractions must sum to 1, got {total:.6f}")


@dataclass(frozen=True)
class DatasetSplits:
    train: LabelledDataset
    validation: LabelledDataset
    test: LabelledDataset
    seed: int

    def by_name(self) -> dict[str, LabelledDataset]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def hashes(self) -> dict[str, str]:
        return {name: split.content_hash() for name, split in self.by_name().items()}

    def eval_suite(self) -> LabelledDataset:
        """The held-out splits as one dataset (validation rows, then test rows)."""
        parts = [self.by_name()[name] for name in EVAL_SUITE_SPLITS]
        return LabelledDataset(
            texts=tuple(text for part in parts for text in part.texts),
            labels=tuple(label for part in parts for label in part.labels),
            schema=self.test.schema,
            source="eval suite: " + " + ".join(EVAL_SUITE_SPLITS),
            rows_read=sum(len(part) for part in parts),
            duplicates=DuplicateReport(0, 0, 0),
        )

    def write_jsonl(self, directory: Path) -> dict[str, Path]:
        """Write each split as JSONL (text, raw label), the label schema, and the seed and hashes beside them."""
        directory.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for name, split in self.by_name().items():
            path = directory / f"{name}.jsonl"
            write_jsonl(split, path)
            paths[name] = path
        (directory / "label_schema.json").write_text(json.dumps(self.train.schema.to_json(), indent=2))
        (directory / "splits.json").write_text(json.dumps({"seed": self.seed, "hashes": self.hashes()}, indent=2))
        return paths


def jsonl_bytes(dataset: LabelledDataset) -> bytes:
    """One JSON object (text, raw label) per line, UTF-8, newline-terminated."""
    lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in dataset.to_records())
    return "".join(lines).encode("utf-8")


def write_jsonl(dataset: LabelledDataset, path: Path) -> None:
    path.write_bytes(jsonl_bytes(dataset))


def read_split_jsonl(path: Path, schema: LabelSchema) -> LabelledDataset:
    """Read a split written by ``DatasetSplits.write_jsonl`` (already validated and de-duplicated)."""
    texts: list[str] = []
    labels: list[int] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line:
            record = json.loads(line)
            texts.append(record["text"])
            labels.append(schema.index_of(record["label"]))
    return LabelledDataset(
        texts=tuple(texts),
        labels=tuple(labels),
        schema=schema,
        source=str(path),
        rows_read=len(texts),
        duplicates=DuplicateReport(0, 0, 0),
    )


def stratified_split(dataset: LabelledDataset, fractions: SplitFractions, seed: int) -> DatasetSplits:
    """Split each class by the fractions, in an order fixed by ``seed``.

    The same dataset, fractions and seed always give the same splits; every class with at least three rows
    lands in all three splits.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset.labels)
    parts: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for cls in range(dataset.schema.num_labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 3:
            raise ValueError(
                f"class {dataset.schema.names[cls]!r} has {len(members)} row(s); "
                "a stratified train/validation/test split needs at least 3 per class"
            )
        members = rng.permutation(members)
        n_test = max(1, round(len(members) * fractions.test))
        n_val = max(1, round(len(members) * fractions.validation))
        parts["test"].extend(members[:n_test].tolist())
        parts["validation"].extend(members[n_test : n_test + n_val].tolist())
        parts["train"].extend(members[n_test + n_val :].tolist())
    subsets = {name: dataset.subset(sorted(indices)) for name, indices in parts.items()}
    return DatasetSplits(subsets["train"], subsets["validation"], subsets["test"], seed=seed)


def read_splits(directory: Path) -> DatasetSplits:
    """Read back the splits written by ``DatasetSplits.write_jsonl``; refuse them if a hash no longer matches."""
    for required in ("label_schema.json", "splits.json"):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory} holds no {required}; it is not a directory of written splits")
    schema = LabelSchema.from_json(json.loads((directory / "label_schema.json").read_text()))
    recorded = json.loads((directory / "splits.json").read_text())
    parts = {name: read_split_jsonl(directory / f"{name}.jsonl", schema) for name in SPLIT_NAMES}
    splits = DatasetSplits(parts["train"], parts["validation"], parts["test"], seed=int(recorded["seed"]))
    changed = sorted(name for name, digest in splits.hashes().items() if recorded["hashes"][name] != digest)
    if changed:
        raise ValueError(f"{directory}: split(s) {changed} changed since they were written (content hash mismatch)")
    return splits
