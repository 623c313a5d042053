"""tl_platform: transfer learning from a pretrained model to a monitored production service.

The library is pure: data in, typed results out. It never imports Dagster, and MLflow only in
``tl_platform.tracking.mlflow_tracker``.
"""

from __future__ import annotations

__version__ = "0.1.0"
