"""Reading a monitoring window from the prediction log: one model version's served rows with start <= ts < end.

Only the columns drift needs, no ordering, and for a large window a bounded sample: the drift scores that
decide are effect sizes (KL, Jensen-Shannon, squared MMD), which 10,000 rows estimate to a few thousandths
(see ``DEFAULT_MAX_ROWS``), while reading a million rows costs seconds on SQLite. The row count stays exact.

The sample is systematic in a hash of the row's identity: on SQLite a multiplicative (Fibonacci) hash of the
rowid, whose high bits no periodic pattern in insertion order can align with (served and shadow rows
alternate, for instance), evaluated on the (model_version, role, ts) index so that rows outside the sample are
never fetched; on Postgres ``hashtext`` of the request id XOR ``hashint4`` of the item index, read from each row
of the window (in the bench a serial scan: the planner cannot know that the filter keeps 1 row in ``stride``).
Another backend reads every row and samples in memory. The exact count reads the same index alone.

Measured on SQLite at 1,000,000 rows (bench/drift_throughput.py): the count about 0.08 s, the sampled read
about 0.15 s, nearly all of it the hash evaluated on every index entry (the 10,000 row lookups cost little).
Sampling by time slices instead (a random offset in each of 2,500 strata, read by index seeks) was measured
at 0.11 to 0.16 s: no faster, and a cluster sample, so the hash stays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from tl_platform.serving.prediction_log import SERVED, PredictionLog

if TYPE_CHECKING:
    import pandas as pd

# KL over 10 bins from 10,000 rows: bias about 9 / 20,000, standard error about 0.006 near the 0.15 threshold;
# Jensen-Shannon distance's noise about 0.004 against 0.1. Only a window within ~0.01 of a threshold can flip.
DEFAULT_MAX_ROWS = 10_000
_HASH_MODULUS = 2**31
_GOLDEN = 1_327_217_885  # odd, about 2^31 / golden ratio: Knuth's multiplicative hashing


@dataclass(frozen=True)
class FeatureWindow:
    """Feature columns of a window: numeric as float64 (NaN for NULL), categorical as str objects (None for NULL;
    booleans as "true" / "false"). ``rows`` counts the whole window; the arrays hold ``rows_read`` of them,
    about one in ``stride`` when the window was sampled."""

    model_version: str
    start: datetime
    end: datetime
    role: str
    rows: int
    stride: int
    columns: dict[str, np.ndarray]

    @property
    def rows_read(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def sampled(self) -> bool:
        return self.rows_read < self.rows

    def frame(self) -> pd.DataFrame:
        """The columns as a frame (e.g. Evidently's current data)."""
        import pandas as pd

        return pd.DataFrame(self.columns)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _check_window(start: datetime, end: datetime) -> None:
    if _utc(end) <= _utc(start):
        raise ValueError(f"end must be after start, got start={start.isoformat()} end={end.isoformat()}")


def served_versions(
    log: PredictionLog, start: datetime, end: datetime, variant: str | None = "champion"
) -> dict[str, int]:
    """Served rows per model version with ``start <= ts < end``, by ``variant`` (None: every variant)."""
    _check_window(start, end)
    p = log.predictions
    query = (
        sa.select(p.c.model_version, sa.func.count())
        .where(p.c.ts >= _utc(start), p.c.ts < _utc(end), p.c.role == SERVED)
        .group_by(p.c.model_version)
    )
    if variant is not None:
        query = query.where(p.c.variant == variant)
    with log.engine.connect() as connection:
        return {str(version): int(count) for version, count in sorted(connection.execute(query).all())}


def _sample_condition(log: PredictionLog, stride: int, seed: int) -> sa.ColumnElement[bool] | None:
    """Rows whose hash, in [0, 2^31), falls below 2^31 / stride; ``seed`` changes the hash, so the sample."""
    width = _HASH_MODULUS // stride
    salt = (seed * 2_654_435_761) % _HASH_MODULUS
    p = log.predictions
    backend = log.engine.dialect.name
    if backend == "sqlite":
        key: sa.ColumnElement[Any] = sa.literal_column("rowid") % _HASH_MODULUS  # < 2^31, so key * _GOLDEN stays below 2^62
        return sa.and_((key * _GOLDEN + salt) % _HASH_MODULUS < width)
    if backend == "postgresql":  # hashtext mixes well already; XOR, not +, keeps it in int4 without overflow
        hashed = sa.func.hashtext(p.c.request_id).op("#")(sa.func.hashint4(p.c.item_index)).op("#")(salt)
        return hashed.op("&")(_HASH_MODULUS - 1) < width
    return None


def _selected(p: sa.Table, name: str, categorical: bool) -> sa.ColumnElement[Any]:
    if name not in p.c:
        raise ValueError(f"column {name!r} is not in the prediction log; it has {sorted(p.c.keys())}")
    column = p.c[name]
    if categorical and isinstance(column.type, sa.Boolean):  # the same strings from SQLite's 0/1 and Postgres' bool
        return sa.case((column.is_(None), sa.null()), (column, "true"), else_="false").label(name)
    return column


def _count(connection: sa.Connection, table: sa.Table, condition: sa.ColumnElement[bool]) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one())


def _fetch(connection: sa.Connection, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(query)]  # numpy converts tuples 10x faster than Rows


def read_window(
    log: PredictionLog,
    model_version: str,
    start: datetime,
    end: datetime,
    numeric: Sequence[str],
    categorical: Sequence[str],
    max_rows: int | None = DEFAULT_MAX_ROWS,
    role: str = SERVED,
    seed: int = 0,
) -> FeatureWindow:
    """The ``numeric`` and ``categorical`` columns of ``model_version``'s rows with ``start <= ts < end`` (naive
    times are UTC): every row when there are at most ``max_rows`` (or ``max_rows`` is None), else a sample of
    about ``max_rows`` rows (``seed`` picks which)."""
    import pandas as pd

    _check_window(start, end)
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1 or None, got {max_rows}")
    names = [*numeric, *categorical]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"numeric and categorical must name distinct columns, at least one, got {names}")
    p = log.predictions
    selected = [_selected(p, n, False) for n in numeric] + [_selected(p, n, True) for n in categorical]
    in_window = sa.and_(p.c.model_version == model_version, p.c.ts >= _utc(start), p.c.ts < _utc(end), p.c.role == role)
    with log.engine.connect() as connection:
        # exact, from the (model_version, role, ts) index alone; the sampled read after it fetches only the sample's rows
        rows = _count(connection, p, in_window)
        stride = 1 if max_rows is None or rows <= max_rows else math.ceil(rows / max_rows)
        condition = _sample_condition(log, stride, seed) if stride > 1 else None
        records = _fetch(connection, sa.select(*selected).where(in_window if condition is None else sa.and_(in_window, condition)))
    table = np.array(records, dtype=object).reshape(len(records), len(names))
    if stride > 1 and condition is None:  # a backend without a hash: every row was read, sample here
        chosen = np.random.default_rng(seed).choice(len(table), math.ceil(rows / stride), replace=False)
        table = table[np.sort(chosen)]
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        values = table[:, i]
        missing = pd.isna(values)
        if i < len(numeric):  # NULL (None) becomes NaN
            columns[name] = np.where(missing, np.nan, values).astype(np.float64)
        else:
            values[missing] = None
            columns[name] = values
    return FeatureWindow(model_version, _utc(start), _utc(end), role, rows, stride, columns)
