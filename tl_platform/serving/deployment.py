"""The deployment record: which exported bundle serves as champion and challenger, the split, and shadow mode.

It is the one file the server reads (and watches). The ``deployment`` asset writes it with
``write_deployment_record``, atomically, so a watching server never sees half a file::

    {"champion": {"version": "3", "bundle": "/abs/exported/bundle", "precision": "int8"},
     "challenger": {"version": "4", "bundle": "/abs/other/bundle", "precision": "int8"} | null,
     "challenger_share": 0.1, "shadow": false, "updated_at": "2025-01-01T00:00:00+00:00"}

``precision`` is ``int8`` or ``fp32`` (the ONNX graphs of the exported bundle) or ``torch`` (PyTorch FP32
eager on the task bundle named by ``torch_bundle``; the benchmark's baseline).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

Precision = Literal["int8", "fp32", "torch"]
PRECISIONS: tuple[Precision, ...] = ("int8", "fp32", "torch")
_VARIANT_KEYS = frozenset({"version", "bundle", "precision", "torch_bundle"})
_RECORD_KEYS = frozenset({"champion", "challenger", "challenger_share", "shadow", "updated_at"})


class DeploymentRecordError(ValueError):
    """The deployment record is missing, not JSON, or breaks a rule; the message names the field."""


@dataclass(frozen=True)
class VariantSpec:
    """One deployed model.

    Attributes:
        version: the registered model version (shown in every response and log row).
        bundle: the exported bundle directory (verified before loading).
        precision: ``int8``, ``fp32`` or ``torch``.
        torch_bundle: the task bundle to run eagerly; required when (and only used when) precision is ``torch``.
    """

    version: str
    bundle: Path
    precision: Precision = "int8"
    torch_bundle: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        if self.torch_bundle is not None:
            object.__setattr__(self, "torch_bundle", Path(self.torch_bundle))
        if not isinstance(self.version, str) or not self.version.strip():
            raise DeploymentRecordError(f"version must be a non-empty string, got {self.version!r}")
        if self.precision not in PRECISIONS:
            raise DeploymentRecordError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "torch" and self.torch_bundle is None:
            raise DeploymentRecordError("torch_bundle is required when precision is 'torch' (the task bundle to run)")

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"version": self.version, "bundle": str(self.bundle), "precision": self.precision}
        if self.torch_bundle is not None:
            data["torch_bundle"] = str(self.torch_bundle)
        return data

    @classmethod
    def from_json(cls, data: Any, field: str) -> VariantSpec:
        if not isinstance(data, dict):
            raise DeploymentRecordError(f"{field} must be an object with version, bundle and precision, got {data!r}")
        unknown = sorted(set(data) - _VARIANT_KEYS)
        if unknown:
            raise DeploymentRecordError(f"{field} has unknown keys {unknown}; allowed: {sorted(_VARIANT_KEYS)}")
        for key in ("version", "bundle"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise DeploymentRecordError(f"{field}.{key} must be a non-empty string, got {data.get(key)!r}")
        torch_bundle = data.get("torch_bundle")
        if torch_bundle is not None and not isinstance(torch_bundle, str):
            raise DeploymentRecordError(f"{field}.torch_bundle must be a path string or null, got {torch_bundle!r}")
        try:
            return cls(
                version=data["version"],
                bundle=Path(data["bundle"]),
                precision=cast(Precision, data.get("precision", "int8")),
                torch_bundle=Path(torch_bundle) if torch_bundle else None,
            )
        except DeploymentRecordError as err:
            raise DeploymentRecordError(f"{field}.{err}") from err


@dataclass(frozen=True)
class DeploymentRecord:
    """Champion, optional challenger, the challenger's share of units, and shadow mode.

    Rules: ``challenger_share`` is in [0, 1] and must be 0 without a challenger; shadow mode needs a challenger
    and a share of 0 (in shadow mode every caller sees the champion, and the challenger scores silently).
    """

    champion: VariantSpec
    challenger: VariantSpec | None = None
    challenger_share: float = 0.0
    shadow: bool = False
    updated_at: str = ""

    def __post_init__(self) -> None:
        share = self.challenger_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= float(share) <= 1.0:
            raise DeploymentRecordError(f"challenger_share must be a number in [0, 1], got {share!r}")
        object.__setattr__(self, "challenger_share", float(share))
        if not isinstance(self.shadow, bool):
            raise DeploymentRecordError(f"shadow must be true or false, got {self.shadow!r}")
        if self.challenger is None and self.challenger_share > 0:
            raise DeploymentRecordError(
                f"challenger_share must be 0 when challenger is null, got {self.challenger_share}"
            )
        if self.shadow and self.challenger is None:
            raise DeploymentRecordError("shadow is true but challenger is null; shadow mode needs a challenger")
        if self.shadow and self.challenger_share > 0:
            raise DeploymentRecordError(
                f"challenger_share must be 0 in shadow mode (callers all see the champion), got {self.challenger_share}"
            )
        if not self.updated_at:
            object.__setattr__(self, "updated_at", datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, object]:
        return {
            "champion": self.champion.to_json(),
            "challenger": self.challenger.to_json() if self.challenger is not None else None,
            "challenger_share": self.challenger_share,
            "shadow": self.shadow,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> DeploymentRecord:
        if not isinstance(data, dict):
            raise DeploymentRecordError(f"the deployment record must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _RECORD_KEYS)
        if unknown:
            raise DeploymentRecordError(f"unknown keys {unknown}; allowed: {sorted(_RECORD_KEYS)}")
        if "champion" not in data:
            raise DeploymentRecordError("champion is required")
        updated_at = data.get("updated_at", "")
        if not isinstance(updated_at, str):
            raise DeploymentRecordError(f"updated_at must be an ISO time string, got {updated_at!r}")
        challenger = data.get("challenger")
        return cls(
            champion=VariantSpec.from_json(data["champion"], "champion"),
            challenger=VariantSpec.from_json(challenger, "challenger") if challenger is not None else None,
            challenger_share=data.get("challenger_share", 0.0),
            shadow=data.get("shadow", False),
            updated_at=updated_at,
        )


def read_deployment_record(path: Path) -> DeploymentRecord:
    """Read and validate the record; DeploymentRecordError names the file and the broken rule."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DeploymentRecordError(f"{path}: no deployment record (the deployment asset writes it)") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DeploymentRecordError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    try:
        return DeploymentRecord.from_json(data)
    except DeploymentRecordError as err:
        raise DeploymentRecordError(f"{path}: {err}") from err


def write_deployment_record(path: Path, record: DeploymentRecord) -> Path:
    """Write the record atomically: a temporary file in the same directory, fsynced, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record.to_json(), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
