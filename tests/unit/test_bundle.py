"""Reproducibility bundles: sealed on write; tampered, incomplete or pickle-carrying bundles are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModel, AutoTokenizer

from tl_platform.checkpoints import BundleError, capture_provenance, load_bundle, verify_bundle, write_bundle
from tl_platform.data.bundled import SENTIMENT_SCHEMA


def make_task_bundle(tiny_bert_dir: Path, directory: Path) -> Path:
    model = AutoModel.from_pretrained(tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    provenance = capture_provenance(
        stage="task", config={"method": "full"}, seeds={"training": 1}, data_hashes={"test": "abc"}, parent_bundle=None
    )
    write_bundle(
        directory, model=model, tokenizer=tokenizer, provenance=provenance, label_schema=SENTIMENT_SCHEMA,
        extra_files={"eval_set.jsonl": b'{"text": "ok", "label": "1"}\n'},
    )
    return directory


@pytest.fixture()
def bundle(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    return make_task_bundle(tiny_bert_dir, tmp_path / "bundle")


def test_a_written_bundle_verifies_and_carries_its_provenance(bundle: Path) -> None:
    manifest = verify_bundle(bundle, expected_stage="task")
    assert manifest.stage == "task"
    assert {"model/model.safetensors", "label_schema.json", "eval_set.jsonl"} <= set(manifest.files)
    assert manifest.provenance["seeds"] == {"training": 1}
    assert manifest.provenance["data_hashes"] == {"test": "abc"}
    assert manifest.provenance["libraries"]["torch"].startswith("2.")
    assert manifest.label_schema() == SENTIMENT_SCHEMA
    assert len(manifest.bundle_sha256) == 64


def test_load_bundle_returns_model_and_tokenizer(bundle: Path) -> None:
    model, tokenizer, manifest = load_bundle(bundle, AutoModel, expected_stage="task")
    assert model.config.num_hidden_layers == 2
    assert tokenizer("good phone")["input_ids"][0] == tokenizer.cls_token_id
    assert manifest.weights_sha256 == manifest.files["model/model.safetensors"]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_from_manifest(bundle: Path, name: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"][name]
    (bundle / name).unlink()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


TAMPERING = [
    ("weights changed", lambda b: flip_a_byte(b / "model/model.safetensors"), r"model/model.safetensors has SHA-256 .* \(tampered\)"),
    ("schema edited", lambda b: (b / "label_schema.json").write_text("{}"), r"label_schema.json has SHA-256 .* \(tampered\)"),
    ("file deleted", lambda b: (b / "eval_set.jsonl").unlink(), "missing file eval_set.jsonl listed in the manifest"),
    ("file added", lambda b: (b / "notes.txt").write_text("hi"), r"files not in the manifest \['notes.txt'\]"),
    ("pickle added", lambda b: (b / "model/pytorch_model.bin").write_bytes(b"x"), r"pickle-format files \['model/pytorch_model.bin'\]"),
    ("manifest removed", lambda b: (b / "manifest.json").unlink(), "no manifest.json"),
    ("manifest garbled", lambda b: (b / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
    ("required file unlisted", lambda b: drop_from_manifest(b, "label_schema.json"), r"incomplete task bundle, manifest lacks \['label_schema.json'\]"),
]


@pytest.mark.parametrize(("case", "tamper", "message"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampered_or_incomplete_bundles_are_refused(bundle: Path, case: str, tamper: object, message: str) -> None:
    tamper(bundle)  # type: ignore[operator]
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle)
    with pytest.raises(BundleError):
        load_bundle(bundle, AutoModel)


def test_wrong_stage_is_refused(bundle: Path) -> None:
    with pytest.raises(BundleError, match="expected a foundation bundle, found a task bundle"):
        verify_bundle(bundle, expected_stage="foundation")


def test_writing_into_a_used_directory_is_refused(tiny_bert_dir: Path, bundle: Path) -> None:
    with pytest.raises(BundleError, match="refusing to write a bundle into a non-empty directory"):
        make_task_bundle(tiny_bert_dir, bundle)


def test_a_copied_bundle_still_verifies(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    assert verify_bundle(copy).bundle_sha256 == verify_bundle(bundle).bundle_sha256


def test_foundation_bundle_without_eval_suite_is_incomplete(tiny_bert_dir: Path, tmp_path: Path) -> None:
    provenance = capture_provenance("foundation", {}, {}, {}, None)
    with pytest.raises(BundleError, match=r"incomplete foundation bundle, manifest lacks \['eval_suite/validation.jsonl'"):
        write_bundle(
            tmp_path / "f", model=AutoModel.from_pretrained(tiny_bert_dir),
            tokenizer=AutoTokenizer.from_pretrained(tiny_bert_dir), provenance=provenance,
        )
