"""Task and exported bundles of the tiny BERT, for tests of export and serving (seconds, no download)."""

from __future__ import annotations

from pathlib import Path

from tl_platform.checkpoints import capture_provenance, seal_bundle, write_bundle
from tl_platform.data import SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import SENTIMENT_SCHEMA, bundled_source
from tl_platform.data.splits import DatasetSplits, jsonl_bytes
from tl_platform.export.exported_bundle import ExportConfig, export_task_bundle


def amazon_splits(seed: int = 0) -> DatasetSplits:
    return stratified_split(load_labelled_text(bundled_source("amazon")), SplitFractions(), seed)


def build_tiny_task_bundle(
    tiny_bert_dir: Path, directory: Path, epochs: int = 2, seed: int = 0, max_length: int = 64, truncation: str = "head"
) -> Path:
    """Fine-tune the tiny BERT fully for a couple of epochs and seal it as a task bundle."""
    from transformers import AutoTokenizer

    from tl_platform.tracking.protocol import NullTracker
    from tl_platform.training.classifier import fine_tune_classifier
    from tl_platform.training.config import FineTuneConfig

    splits = amazon_splits()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = FineTuneConfig(
        method="full", epochs=epochs, learning_rate=3e-3, seed=seed, max_length=max_length, truncation=truncation  # type: ignore[arg-type]
    )
    result = fine_tune_classifier(tiny_bert_dir, tokenizer, splits, config, directory.parent / f"{directory.name}-work", NullTracker())
    provenance = capture_provenance("task", config.to_json(), {"training": seed}, splits.hashes(), None)
    write_bundle(
        directory, model=result.model, tokenizer=tokenizer, provenance=provenance, label_schema=SENTIMENT_SCHEMA,
        extra_files={"eval_set.jsonl": jsonl_bytes(splits.test)},
    )
    return directory


def build_tiny_exported_bundle(task_bundle: Path, directory: Path, config: ExportConfig | None = None) -> Path:
    """Export a tiny task bundle to ONNX FP32 and INT8 and seal it as an exported bundle."""
    settings = config or ExportConfig(latency_requests=20, latency_budget_p99_ms=1000.0)
    export_task_bundle(task_bundle, directory, amazon_splits(), settings)
    seal_bundle(directory, capture_provenance("exported", settings.to_json(), {}, {}, None))
    return directory
