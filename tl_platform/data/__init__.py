"""Labelled text and unlabelled corpora: schemas, loaders that name what is wrong, deterministic splits, hashes."""

from __future__ import annotations

from tl_platform.data.corpus import CorpusReport, CorpusSource, UnlabelledCorpus, load_corpus
from tl_platform.data.loading import DataValidationError, load_labelled_text
from tl_platform.data.schema import DatasetSource, LabelledDataset, LabelSchema
from tl_platform.data.splits import DatasetSplits, SplitFractions, stratified_split

__all__ = [
    "CorpusReport",
    "CorpusSource",
    "DataValidationError",
    "DatasetSource",
    "DatasetSplits",
    "LabelSchema",
    "LabelledDataset",
    "SplitFractions",
    "UnlabelledCorpus",
    "load_corpus",
    "load_labelled_text",
    "stratified_split",
]
