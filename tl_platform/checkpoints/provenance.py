"""What produced a checkpoint: code version, library versions, seeds, config and data hashes."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

TRACKED_LIBRARIES = ("tl_platform", "torch", "transformers", "peft", "accelerate", "safetensors", "numpy")


@dataclass(frozen=True)
class Provenance:
    """Everything needed to explain, and to repeat, how a checkpoint was made.

    ``git_sha`` is None outside a git checkout (an installed wheel, say); ``git_dirty`` then is None too.
    """

    stage: str
    config: dict[str, object]
    seeds: dict[str, int]
    data_hashes: dict[str, str]
    parent_bundle: str | None
    git_sha: str | None
    git_dirty: bool | None
    libraries: dict[str, str]
    python: str
    created_at: str
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def capture_provenance(
    stage: str,
    config: dict[str, object],
    seeds: dict[str, int],
    data_hashes: dict[str, str],
    parent_bundle: str | None,
    extra: dict[str, object] | None = None,
) -> Provenance:
    sha, dirty = _git_state(Path(__file__).resolve().parents[2])
    return Provenance(
        stage=stage,
        config=config,
        seeds=seeds,
        data_hashes=data_hashes,
        parent_bundle=parent_bundle,
        git_sha=sha,
        git_dirty=dirty,
        libraries=library_versions(),
        python=platform.python_version(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        extra=extra or {},
    )


def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git_state(repo: Path) -> tuple[str | None, bool | None]:
    if not (repo / ".git").exists():
        return None, None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, check=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        # A checkout without a first commit, or no git binary: the SHA is unknown, and recorded as unknown.
        return None, None
    return sha, bool(status.strip())
