"""The optional second half of the canary: a labelled file (refreshed weekly, say) scored by the live model.

Feedback labels cover only what users chose to label; a curated file covers what the team chose to check.
Its rows join the window's labelled traffic as the slice ``source=labelled_file``.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from tl_platform.data.schema import LabelledDataset
from tl_platform.serving.model import ServingModel

SOURCE_KEY = "source"
FILE_SOURCE = "labelled_file"


def score_labelled_file(model: ServingModel, dataset: LabelledDataset, window_start: datetime, batch_size: int = 32) -> pd.DataFrame:
    """The file's rows as the canary reads labelled traffic: predicted and true label (raw values), with a slice."""
    if dataset.schema.labels != model.labels:
        raise ValueError(
            f"{dataset.source}: labels {list(dataset.schema.labels)} differ from model v{model.version}'s {list(model.labels)}"
        )
    predicted: list[str] = []
    for start in range(0, len(dataset), batch_size):
        tokens = model.tokenize(dataset.texts[start : start + batch_size])
        logits, _ = model.infer([token.input_ids for token in tokens])
        predicted.extend(model.labels[i] for i in np.argmax(logits, axis=1))
    return pd.DataFrame({
        "request_id": [f"{FILE_SOURCE}-{i}" for i in range(len(dataset))],
        "item_index": 0,
        "ts": pd.Timestamp(window_start),  # counted in the window it is scored for
        "model_version": model.version,
        "predicted": predicted,
        "true_label": [dataset.schema.labels[i] for i in dataset.labels],
        "attributes": [{SOURCE_KEY: FILE_SOURCE} for _ in range(len(dataset))],
    })
