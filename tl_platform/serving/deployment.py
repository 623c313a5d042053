"""The deployment record: which exported bundle serves as champion and challenger, the split, and shadow mode.

It is the one file the server reads (and watches). The ``deployment`` asset writes it with
``write_deployment_record``, atomically, so a watching server never sees half a file::

    {"champion": {"version": "3", "bundle": "/abs/exported/bundle", "precision": "int8",
                  "bundle_sha256": "<64 hex digits>"},
     "challenger": {"version": "4", "bundle": "/abs/other/bundle", "precision": "int8"} | null,
     "challenger_share": 0.1, "shadow": false, "experiment_id": "exp-2025-01", "routing_salt": "exp-2025-01",
     "updated_at": "2025-01-01T00:00:00+00:00"}

``precision`` is ``int8`` or ``fp32`` (the ONNX graphs of the exported bundle) or ``torch`` (PyTorch FP32
eager on the task bundle named by ``torch_bundle``; the benchmark's baseline). ``bundle_sha256``,
``experiment_id`` and ``routing_salt`` are optional (records written before them still load) and written only
when set.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

Precision = Literal["int8", "fp32", "torch"]
PRECISIONS: tuple[Precision, ...] = ("int8", "fp32", "torch")
_VARIANT_KEYS = frozenset({"version", "bundle", "precision", "torch_bundle", "bundle_sha256"})
_RECORD_KEYS = frozenset(
    {"champion", "challenger", "challenger_share", "shadow", "experiment_id", "routing_salt", "updated_at"}
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
ROUTING_FIELD_CHARS = 128  # the prediction log's experiment_id and routing_salt columns hold this many


def _check_routing_field(name: str, value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str) or not value or value != value.strip() or len(value) > ROUTING_FIELD_CHARS
        or not value.isprintable()
    ):
        raise DeploymentRecordError(
            f"{name} must be null or a string of 1 to {ROUTING_FIELD_CHARS} printable characters without "
            f"surrounding whitespace, got {value!r}"
        )


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
        bundle_sha256: SHA-256 of the exported bundle's manifest.json (``verify_bundle(...).bundle_sha256``), 64
            lowercase hex digits; when set, the server refuses a bundle whose manifest differs (a bundle rebuilt
            or swapped in place since it was deployed).
    """

    version: str
    bundle: Path
    precision: Precision = "int8"
    torch_bundle: Path | None = None
    bundle_sha256: str | None = None

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
        digest = self.bundle_sha256
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise DeploymentRecordError(
                f"bundle_sha256 must be null or 64 lowercase hex characters (the SHA-256 of the bundle's "
                f"manifest.json), got {digest!r}"
            )

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"version": self.version, "bundle": str(self.bundle), "precision": self.precision}
        if self.torch_bundle is not None:
            data["torch_bundle"] = str(self.torch_bundle)
        if self.bundle_sha256 is not None:
            data["bundle_sha256"] = self.bundle_sha256
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
                bundle_sha256=data.get("bundle_sha256"),
            )
        except DeploymentRecordError as err:
            raise DeploymentRecordError(f"{field}.{err}") from err


@dataclass(frozen=True)
class DeploymentRecord:
    """Champion, optional challenger, the challenger's share of units, and shadow mode.

    Rules: ``challenger_share`` is in [0, 1] and must be 0 without a challenger; shadow mode needs a challenger
    and a share of 0 (in shadow mode every caller sees the champion, and the challenger scores silently).

    ``experiment_id`` names the A/B experiment this split belongs to; ``routing_salt`` salts the unit hash for
    it (a new salt reshuffles units, so a new experiment does not inherit the last one's assignment); without
    one the server's ``ServingConfig.routing_salt`` is used. Both are null or 1 to 128 printable characters, and
    every log row records them with the share.
    """

    champion: VariantSpec
    challenger: VariantSpec | None = None
    challenger_share: float = 0.0
    shadow: bool = False
    updated_at: str = ""
    experiment_id: str | None = None
    routing_salt: str | None = None

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
        _check_routing_field("experiment_id", self.experiment_id)
        _check_routing_field("routing_salt", self.routing_salt)
        if not self.updated_at:
            object.__setattr__(self, "updated_at", datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "champion": self.champion.to_json(),
            "challenger": self.challenger.to_json() if self.challenger is not None else None,
            "challenger_share": self.challenger_share,
            "shadow": self.shadow,
        }
        # written only when set: a replica still on an older release refuses keys it does not know
        if self.experiment_id is not None:
            data["experiment_id"] = self.experiment_id
        if self.routing_salt is not None:
            data["routing_salt"] = self.routing_salt
        data["updated_at"] = self.updated_at
        return data

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
            experiment_id=data.get("experiment_id"),
            routing_salt=data.get("routing_salt"),
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
