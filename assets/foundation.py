"""The pretrained encoder every later stage starts from, with the frozen eval suite they are all scored on."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets.stage_records import (
    bundle_metadata,
    content_version,
    log_split_inputs,
    register_bundle,
    tracking_metadata,
)
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.checkpoints import capture_provenance, write_bundle
from tl_platform.data.splits import EVAL_SUITE_SPLITS, jsonl_bytes, read_splits
from tl_platform.evaluation.probe import linear_probe
from tl_platform.models.embedding import embed_texts
from tl_platform.models.foundation import (
    DEFAULT_FOUNDATION_SOURCE,
    FoundationSource,
    describe_foundation,
    load_encoder,
    load_tokenizer,
    resolve_source,
)


class FoundationConfig(dg.Config):
    source: str = Field(
        default=DEFAULT_FOUNDATION_SOURCE,
        description="package:<module> carrying weights, a local Hugging Face model directory, or a hub id",
    )
    allow_download: bool = Field(default=False, description="fetch a hub id not in the local cache")
    probe_max_length: int = Field(default=64, description="tokens per text for the linear-probe embeddings")


@dg.asset(group_name="transfer", kinds={"pytorch", "mlflow"}, deps=["labelled_data"], code_version="2")
def foundation_model(
    context: dg.AssetExecutionContext,
    config: FoundationConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The pretrained encoder and tokenizer, frozen into a bundle with the eval suite (held-out splits).

    Records what was loaded (parameters, config, tokenizer, weights hash) and how far the frozen embeddings
    already get: a linear probe on the eval suite is the baseline every later stage has to beat.
    """
    # The tracked run spans the whole stage, so its wall-clock is the stage's measured compute.
    with mlflow.run_for_asset(context) as tracker:
        data = stage_store.upstream(context, "labelled_data")
        splits = read_splits(data.path)
        spec = FoundationSource(config.source, config.allow_download)
        resolved = resolve_source(spec)
        tokenizer = load_tokenizer(resolved, config.allow_download)
        encoder = load_encoder(resolved, config.allow_download)

        schema = splits.train.schema
        embeddings = {
            name: embed_texts(encoder, tokenizer, splits.by_name()[name].texts, config.probe_max_length)
            for name in ("train", "test")
        }
        probe = linear_probe(
            embeddings["train"], np.asarray(splits.train.labels),
            embeddings["test"], np.asarray(splits.test.labels), schema.names, seed=0,
        )

        directory = stage_store.output_dir(context)
        extra = {f"eval_suite/{name}.jsonl": jsonl_bytes(splits.by_name()[name]) for name in EVAL_SUITE_SPLITS}
        extra["eval_suite/label_schema.json"] = json.dumps(schema.to_json(), indent=2).encode()
        extra["reports/linear_probe.json"] = json.dumps(probe.to_json(), indent=2).encode()
        provenance = capture_provenance(
            stage="foundation",
            config=config.model_dump(),
            seeds={"split": splits.seed, "probe": 0},
            data_hashes=splits.hashes(),
            parent_bundle=None,
            extra={"resolved_source": resolved},
        )
        manifest = write_bundle(directory / "bundle", model=encoder, tokenizer=tokenizer, provenance=provenance, extra_files=extra)
        info = describe_foundation(spec, resolved, encoder, tokenizer, Path(manifest.path / "model" / "model.safetensors"))
        tracker.log_params({f"foundation.{k}": v for k, v in asdict(info).items()})
        tracker.log_metrics({**probe.summary("probe_test_"), "parameter_count": float(info.parameter_count)})
        log_split_inputs(tracker, splits)
        version = register_bundle(tracker, manifest, context)
        tracked = tracking_metadata(tracker, version)
        stored = stage_store.save(context, directory)
    return dg.MaterializeResult(
        metadata={
            **tracked,
            **stored,
            **lineage_metadata(data),
            **bundle_metadata(manifest),
            "source": info.source,
            "model_type": info.model_type,
            "parameter_count": info.parameter_count,
            "hidden_size": info.hidden_size,
            "num_layers": info.num_layers,
            "vocab_size": info.vocab_size,
            "tokenizer": info.tokenizer_class,
            "model_config": dg.MetadataValue.json(encoder.config.to_diff_dict()),
            "eval_suite": dg.MetadataValue.json({n: len(splits.by_name()[n]) for n in EVAL_SUITE_SPLITS}),
            "linear_probe_test_accuracy": probe.accuracy,
            "linear_probe_test_macro_f1": probe.macro_f1,
        },
        data_version=content_version(manifest.content_sha256()),
    )
