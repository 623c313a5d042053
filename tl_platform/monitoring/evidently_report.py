"""Evidently's browsable HTML drift report of a window against the reference sample (Evidently 0.7's Report API).

People browse it beside the platform's own drift scores; it is not what decides. Evidently takes about a minute
on a million rows, so both frames are cut to a seeded sample of at most ``max_rows`` rows (20,000 by default:
a few seconds). Its tests are set to the nearest of the platform's deciding scores (KL on numeric features,
Jensen-Shannon on categorical ones, at the same thresholds), though Evidently bins numeric columns its own way
(Sturges bins over both samples together), so its numbers differ from the platform's reference-decile KL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_platform.monitoring.drift import DriftThresholds
from tl_platform.monitoring.reference import category_label

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_REPORT_ROWS = 20_000


def matched_preset_options(thresholds: DriftThresholds | None = None) -> dict[str, Any]:
    """DataDriftPreset keyword arguments nearest to the platform's deciding scores and thresholds."""
    thresholds = thresholds or DriftThresholds()
    numeric = {"kl": ("kl_div", thresholds.kl), "psi": ("psi", thresholds.psi)}[thresholds.numeric_test]
    categorical = {
        "jensenshannon": ("jensenshannon", thresholds.jensenshannon),
        "kl": ("kl_div", thresholds.kl),
        "psi": ("psi", thresholds.psi),
    }[thresholds.categorical_test]
    return {"num_method": numeric[0], "num_threshold": numeric[1], "cat_method": categorical[0], "cat_threshold": categorical[1]}


def _as_categories(column: pd.Series) -> pd.Series:
    import pandas as pd

    return column.astype(object).map(lambda v: None if pd.isna(v) else category_label(v))


def _bounded(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
    return frame.iloc[rows].reset_index(drop=True)


def write_evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    path: Path,
    numeric: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    max_rows: int = DEFAULT_REPORT_ROWS,
    thresholds: DriftThresholds | None = None,
    seed: int = 0,
) -> Path:
    """Write Evidently's DataDriftPreset report of ``current`` against ``reference`` (e.g.
    ``ReferenceProfile.sample_frame()``) to ``path`` (HTML) and return it.

    ``numeric`` and ``categorical`` default to the reference's numeric and other columns. A column with no
    values on either side is left out (Evidently refuses it) and logged.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if max_rows < 100:
        raise ValueError(f"max_rows must be at least 100, got {max_rows}")
    if numeric is None:
        numeric = [str(c) for c in reference.columns if reference[c].dtype.kind in "fiu"]
    if categorical is None:
        categorical = [str(c) for c in reference.columns if str(c) not in numeric]
    columns = [*numeric, *categorical]
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing columns {missing}; it has {[str(c) for c in frame.columns]}")
    ref = _bounded(reference[columns], max_rows, seed).copy()
    cur = _bounded(current[columns], max_rows, seed + 1).copy()
    for name in categorical:
        ref[name], cur[name] = _as_categories(ref[name]), _as_categories(cur[name])
    empty = [c for c in columns if ref[c].notna().sum() == 0 or cur[c].notna().sum() == 0]
    if empty:
        logger.warning("Evidently report: columns %s have no values on one side; left out", empty)
    numeric = [c for c in numeric if c not in empty]
    categorical = [c for c in categorical if c not in empty]
    if not numeric and not categorical:
        raise ValueError(f"no column has values on both sides; columns {columns}")
    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    kept = [*numeric, *categorical]
    with np.errstate(invalid="ignore", divide="ignore"):  # Evidently correlates constant columns too: 0 / 0
        snapshot = Report([DataDriftPreset(columns=kept, **matched_preset_options(thresholds))]).run(
            Dataset.from_pandas(cur[kept], data_definition=definition),
            Dataset.from_pandas(ref[kept], data_definition=definition),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))  # save_html writes only when given a str
    return path
