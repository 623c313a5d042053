"""domain_adapted_model with an unlabelled corpus: trained on it, cleared of held-out text, counted in metadata."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets import TRANSFER_ASSETS, domain_adapted_model
from tests.dagster.conftest import Stages, make_stage_resources, tiny_run_config
from tl_platform.checkpoints import verify_bundle
from tl_platform.data.bundled import BUNDLED_DIR, BUNDLED_DOMAINS


@pytest.fixture(scope="module")
def stages(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Stages:
    """labelled_data and foundation_model materialised once; each test materialises domain_adapted_model."""
    resources = make_stage_resources(tmp_path_factory.mktemp("stages"))
    upstream = TRANSFER_ASSETS[:2]
    config = tiny_run_config(tiny_bert_dir)
    config["ops"] = {"foundation_model": config["ops"]["foundation_model"]}  # type: ignore[index]
    assert resources.materialize(upstream, run_config=config).success
    return resources


def stage_config(tiny_bert_dir: Path, **overrides: object) -> dict[str, object]:
    """The tiny-BERT run config of domain_adapted_model alone."""
    ops = tiny_run_config(tiny_bert_dir, domain_adapted_model=overrides)["ops"]
    return {"ops": {"domain_adapted_model": ops["domain_adapted_model"]}}  # type: ignore[index]


def bundled_sentences(domain: str) -> list[str]:
    lines = (BUNDLED_DIR / BUNDLED_DOMAINS[domain]).read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """All 1,000 amazon sentences (the labelled domain: its train, validation and test texts among them) as a
    text file, and the first 300 yelp sentences in a JSONL file one folder down; a README that is not read."""
    root = tmp_path / "corpus"
    (root / "yelp").mkdir(parents=True)
    (root / "amazon.txt").write_text("\n".join(bundled_sentences("amazon")) + "\n", encoding="utf-8")
    records = [json.dumps({"review": text, "stars": 3}) for text in bundled_sentences("yelp")[:300]]
    (root / "yelp" / "reviews.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    (root / "README.md").write_text("where the corpus came from\n", encoding="utf-8")
    return root


def test_the_stage_trains_on_the_corpus_without_the_heldout_texts(tiny_bert_dir: Path, stages: Stages, corpus_dir: Path) -> None:
    config = stage_config(tiny_bert_dir, epochs=1, corpus_path=str(corpus_dir), corpus_text_column="review")
    result = stages.materialize([domain_adapted_model], run_config=config)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert event.asset_key == dg.AssetKey("domain_adapted_model")
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    counts = meta["corpus_counts"]
    assert counts == {
        "files_read": 2, "documents_read": 1300, "kept": 300, "empty": 0, "duplicates": 0,
        "in_training_texts": 697, "overlapping_heldout": 303, "truncated": 0, "empty_files": 0, "skipped_files": 1,
    }
    # amazon's 990 distinct sentences and 10 repeats: every copy of a validation or test sentence (99 + 198 of
    # them) is dropped, every copy of a training sentence too (trained on once, as labelled text): yelp is left
    assert meta["train_texts"] == 693 + 300
    assert meta["corpus_documents_kept"] == 300
    assert meta["corpus"] == str(corpus_dir)
    assert meta["corpus_skipped_examples"] == ["README.md (extension not read; corpus files are .txt, .csv, .tsv, .jsonl, .ndjson, .parquet)"]
    assert meta["mlm_loss"] == "masked_only"
    assert meta["perplexity_after"] < meta["perplexity_before"]  # type: ignore[operator]
    manifest = verify_bundle(Path(str(meta["bundle"])), expected_stage="domain_adapted")
    assert manifest.provenance["data_hashes"]["corpus"] == meta["corpus_sha256"]
    assert manifest.provenance["config"]["corpus"]["text_column"] == "review"


def test_a_bad_corpus_fails_the_step_naming_the_file_and_nothing_is_materialised(
    tiny_bert_dir: Path, stages: Stages, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    config = stage_config(tiny_bert_dir, corpus_path=str(bad))
    result = stages.materialize([domain_adapted_model], run_config=config, raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "domain_adapted_model"
    message = str(failure.step_failure_data.error)
    assert "bad.jsonl: 1 problem(s)" in message and "line 2: field 'text' must be a string, got int" in message
    assert result.get_asset_materialization_events() == []


def test_a_bad_text_unit_names_the_field(tiny_bert_dir: Path, stages: Stages, corpus_dir: Path) -> None:
    config = stage_config(tiny_bert_dir, corpus_path=str(corpus_dir), corpus_text_unit="sentence")
    with pytest.raises(Exception, match=r"CorpusSource\.text_unit must be 'line' or 'paragraph', got 'sentence'"):
        stages.materialize([domain_adapted_model], run_config=config)
