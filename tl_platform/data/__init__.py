"""Labelled text: schemas, loaders that name what is wrong, deterministic splits and content hashes."""

from __future__ import annotations

from tl_platform.data.loading import DataValidationError, load_labelled_text
from tl_platform.data.schema import DatasetSource, LabelledDataset, LabelSchema
from tl_platform.data.splits import DatasetSplits, SplitFractions, stratified_split

__all__ = [
    "DataValidationError",
    "DatasetSource",
    "DatasetSplits",
    "LabelSchema",
    "LabelledDataset",
    "SplitFractions",
    "load_labelled_text",
    "stratified_split",
]
