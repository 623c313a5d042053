"""The prediction log as the monitoring assets read it: the same database the serving replicas write."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from tl_platform.serving.prediction_log import PredictionLog


class PredictionLogSource(dg.ConfigurableResource):
    """SQLAlchemy URL of the prediction log (``sqlite:///...`` embedded, ``postgresql+psycopg://...`` production)."""

    url: str
    table_prefix: str = ""

    @contextmanager
    def open(self) -> Iterator[PredictionLog]:
        """The log, its schema brought to head if no server has created it yet (an empty log reads as no traffic)."""
        log = PredictionLog(self.url, table_prefix=self.table_prefix)
        try:
            yield log
        finally:
            log.close()
