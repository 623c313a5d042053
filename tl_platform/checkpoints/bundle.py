"""Write and verify reproducibility bundles; a tampered, incomplete or pickle-carrying bundle is refused.

Layout of a bundle directory::

    manifest.json        format, stage, provenance, and the SHA-256 of every other file
    model/               config.json and model.safetensors (save_pretrained output)
    tokenizer/           the exact tokenizer artefacts of training
    label_schema.json    task bundles only
    eval_set.jsonl       the frozen eval split the bundle was scored on (task bundles)
    eval_suite/          the frozen held-out splits and label schema (foundation bundles)
    adapter/             LoRA adapter weights and config, when the task model was trained with LoRA
    model_fp32.onnx, model_int8.onnx, projection.json, serving.json   exported bundles (no model/ directory)
    eval_suite.jsonl     what an exported bundle's gates judged (optional: earlier exports lack it and still serve)
    reports/             metrics and pictures (optional)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_platform.checkpoints.provenance import Provenance
from tl_platform.data.schema import LabelSchema
from tl_platform.models.foundation import sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
REPORTS_DIR = "reports"  # measurements about a bundle (timings, gate figures): not part of its content
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "foundation": (
        "model/config.json",
        "model/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "eval_suite/validation.jsonl",
        "eval_suite/test.jsonl",
        "eval_suite/label_schema.json",
    ),
    "domain_adapted": ("model/config.json", "model/model.safetensors", "tokenizer/tokenizer_config.json"),
    "task": (
        "model/config.json",
        "model/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "label_schema.json",
        "eval_set.jsonl",
    ),
    "exported": (
        "model_fp32.onnx",
        "model_int8.onnx",
        "tokenizer/tokenizer_config.json",
        "label_schema.json",
        "projection.json",
        "serving.json",
    ),
}


class BundleError(ValueError):
    """A bundle failed verification; the message names the bundle, the file and the rule."""


@dataclass(frozen=True)
class BundleManifest:
    path: Path
    stage: str
    files: dict[str, str]
    provenance: dict[str, Any]
    bundle_sha256: str  # hash of manifest.json itself: one value that pins every file in the bundle

    @property
    def weights_sha256(self) -> str:
        for weights in ("model/model.safetensors", "model_int8.onnx"):
            if weights in self.files:
                return self.files[weights]
        raise BundleError(f"{self.path}: a {self.stage} bundle lists no weights file")

    def content_sha256(self, exclude: frozenset[str] = frozenset()) -> str:
        """One hash of what the bundle holds (weights, tokenizer, data), without its provenance or reports.

        The manifest's own hash changes with every write (it records when and from which commit); this one
        changes only when the content does, so it serves as the stage's data version. ``exclude`` names more
        files that only describe provenance.
        """
        digest = hashlib.sha256()
        for relative in sorted(self.files):
            if relative in exclude or relative.startswith(f"{REPORTS_DIR}/"):
                continue
            digest.update(f"{relative}\0{self.files[relative]}\n".encode())
        return digest.hexdigest()

    def label_schema(self) -> LabelSchema:
        if "label_schema.json" not in self.files:
            raise BundleError(f"{self.path}: a {self.stage} bundle has no label schema")
        return LabelSchema.from_json(json.loads((self.path / "label_schema.json").read_text()))


def write_bundle(
    directory: Path,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    provenance: Provenance,
    label_schema: LabelSchema | None = None,
    extra_files: dict[str, bytes] | None = None,
    adapter_dir: Path | None = None,
) -> BundleManifest:
    """Save a model with everything needed to reload and repeat it, then seal it with a manifest."""
    if provenance.stage not in REQUIRED_FILES:
        raise BundleError(f"unknown bundle stage {provenance.stage!r}; expected one of {sorted(REQUIRED_FILES)}")
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise BundleError(f"{directory}: refusing to write a bundle into a non-empty directory")
    model.save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "tokenizer")
    if adapter_dir is not None:
        shutil.copytree(adapter_dir, directory / "adapter")
    if label_schema is not None:
        (directory / "label_schema.json").write_text(json.dumps(label_schema.to_json(), indent=2))
    for relative, content in (extra_files or {}).items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return seal_bundle(directory, provenance)


def seal_bundle(directory: Path, provenance: Provenance) -> BundleManifest:
    """Hash every file already in ``directory`` into its manifest; from then on any change is detected."""
    if (directory / MANIFEST_NAME).exists():
        raise BundleError(f"{directory}: already sealed; a bundle is written once")
    files = {_relative(directory, p): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    manifest = {"format": BUNDLE_FORMAT, "stage": provenance.stage, "files": files, "provenance": provenance.to_json()}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return verify_bundle(directory)


def verify_bundle(directory: Path, expected_stage: str | None = None) -> BundleManifest:
    """Check a bundle against its manifest and return the manifest; raise BundleError on any mismatch."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{directory}: no {MANIFEST_NAME}; this is not a bundle, or it was never sealed")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    for key in ("format", "stage", "files", "provenance"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: missing key {key!r}")
    if manifest["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: bundle format {manifest['format']} is not supported (expected {BUNDLE_FORMAT})")
    stage = manifest["stage"]
    if stage not in REQUIRED_FILES:
        raise BundleError(f"{manifest_path}: unknown stage {stage!r}")
    if expected_stage is not None and stage != expected_stage:
        raise BundleError(f"{directory}: expected a {expected_stage} bundle, found a {stage} bundle")
    files: dict[str, str] = manifest["files"]
    missing_required = [f for f in REQUIRED_FILES[stage] if f not in files]
    if missing_required:
        raise BundleError(f"{directory}: incomplete {stage} bundle, manifest lacks {missing_required}")
    present = {_relative(directory, p) for p in directory.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    pickled = sorted(f for f in present | set(files) if Path(f).suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise BundleError(f"{directory}: holds pickle-format files {pickled}; bundles carry safetensors and JSON only")
    unlisted = sorted(present - set(files))
    if unlisted:
        raise BundleError(f"{directory}: files not in the manifest {unlisted} (added after sealing?)")
    for relative, expected in files.items():
        path = directory / relative
        if not path.is_file():
            raise BundleError(f"{directory}: missing file {relative} listed in the manifest")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{directory}: {relative} has SHA-256 {actual[:12]}..., manifest says {expected[:12]}... (tampered)"
            )
    return BundleManifest(
        path=directory,
        stage=stage,
        files=files,
        provenance=manifest["provenance"],
        bundle_sha256=sha256_file(manifest_path),
    )


def load_bundle(directory: Path, model_class: Any, expected_stage: str | None = None, **model_kwargs: Any) -> tuple[Any, Any, BundleManifest]:
    """Verify a bundle, then load its model (safetensors only) with ``model_class`` and its tokenizer."""
    from transformers import AutoTokenizer

    manifest = verify_bundle(directory, expected_stage)
    model = model_class.from_pretrained(directory / "model", use_safetensors=True, local_files_only=True, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
    return model, tokenizer, manifest


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()

