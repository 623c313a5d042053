"""Continued masked-language-model pretraining of the foundation encoder on the target domain's own text."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
import shutil

import dagster as dg
from pydantic import Field

from assets.stage_records import (
    bundle_metadata,
    content_version,
    log_split_inputs,
    raise_if_gates_failed,
    register_bundle,
    tracking_metadata,
)
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.checkpoints import capture_provenance, verify_bundle, write_bundle
from tl_platform.data.splits import read_splits
from tl_platform.models.foundation import load_tokenizer
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.domain_adaptation import adapt_to_domain

PERPLEXITY_CHECK = "heldout_perplexity_fell"


class DomainAdaptedConfig(dg.Config):
    """The fields of ``DomainAdaptationConfig``; validated there, with messages naming the field."""

    enabled: bool = Field(default=True, description="false passes the foundation model through unchanged")
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    mlm_probability: float = 0.15
    max_length: int = 64
    head_warmup_epochs: int = 3
    head_warmup_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42

    def to_library(self) -> DomainAdaptationConfig:
        return DomainAdaptationConfig(**self.model_dump())


@dg.asset(
    group_name="transfer",
    kinds={"pytorch", "mlflow"},
    deps=["foundation_model", "labelled_data"],
    code_version="2",
    pool="training",
    check_specs=[
        dg.AssetCheckSpec(
            PERPLEXITY_CHECK,
            asset="domain_adapted_model",
            blocking=True,
            description="MLM perplexity on held-out in-domain text must be lower after adaptation than before",
        )
    ],
)
def domain_adapted_model(
    context: dg.AssetExecutionContext,
    config: DomainAdaptedConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The foundation encoder after continued MLM pretraining on unlabelled text of the target domain.

    Trains on the texts of the training split (labels unused) and measures perplexity on the held-out texts
    (validation and test) with one fixed masking, before and after. An encoder whose perplexity did not fall
    fails the step: nothing is materialised, and fine-tuning never starts from it. Disabled by config, the
    foundation model passes through.
    """
    settings = config.to_library()
    upstream_foundation = stage_store.upstream(context, "foundation_model")
    foundation = verify_bundle(upstream_foundation.path / "bundle", expected_stage="foundation")
    with mlflow.run_for_asset(context) as tracker:
        tracker.log_params({f"domain_adaptation.{k}": v for k, v in settings.to_json().items()})
        if not settings.enabled:
            tracker.set_tags({"skipped": "true"})
            return dg.MaterializeResult(
                metadata={
                    **tracking_metadata(tracker, None),
                    **stage_store.pass_through(upstream_foundation),
                    **lineage_metadata(upstream_foundation),
                    **bundle_metadata(foundation),
                    "skipped": True,
                },
                check_results=[
                    dg.AssetCheckResult(
                        check_name=PERPLEXITY_CHECK,
                        passed=True,
                        metadata={"skipped": True},
                        description="stage disabled by config; the foundation model passes through unadapted",
                    )
                ],
                data_version=content_version(foundation.content_sha256()),
            )

        data = stage_store.upstream(context, "labelled_data")
        splits = read_splits(data.path)
        log_split_inputs(tracker, splits)  # train texts are trained on (labels unused); the rest measure perplexity
        tokenizer = load_tokenizer(str(foundation.path / "tokenizer"))
        directory = stage_store.output_dir(context)
        result = adapt_to_domain(
            foundation.path / "model",
            tokenizer,
            train_texts=splits.train.texts,
            heldout_texts=splits.validation.texts + splits.test.texts,
            config=settings,
            work_dir=directory / "work",
            tracker=tracker,
        )
        tracker.log_metrics(result.summary())
        numbers = {
            "perplexity_before": result.perplexity_before,
            "perplexity_after": result.perplexity_after,
            "heldout_masked_tokens": result.heldout_masked_tokens,
        }
        checks = raise_if_gates_failed(
            context,
            [
                dg.AssetCheckResult(
                    check_name=PERPLEXITY_CHECK,
                    passed=result.perplexity_fell,
                    metadata=numbers,
                    description=f"held-out perplexity {result.perplexity_before:.2f} -> {result.perplexity_after:.2f}",
                )
            ],
        )
        provenance = capture_provenance(
            stage="domain_adapted",
            config=settings.to_json(),
            seeds={"training": settings.seed, "heldout_masking": settings.seed},
            data_hashes=splits.hashes(),
            parent_bundle=foundation.bundle_sha256,
            extra={"mlm_head_was_missing": result.mlm_head_was_missing},
        )
        report = json.dumps(result.summary(), indent=2).encode()
        manifest = write_bundle(
            directory / "bundle", model=result.encoder, tokenizer=tokenizer, provenance=provenance,
            extra_files={"reports/perplexity.json": report},
        )
        shutil.rmtree(directory / "work", ignore_errors=True)  # trainer checkpoints: the bundle holds the result
        version = register_bundle(tracker, manifest, context)
        tracked = tracking_metadata(tracker, version)
        stored = stage_store.save(context, directory)
    return dg.MaterializeResult(
        metadata={
            **tracked,
            **stored,
            **lineage_metadata(upstream_foundation, data),
            **bundle_metadata(manifest),
            **numbers,
            "perplexity_by_epoch": dg.MetadataValue.json(list(result.perplexity_by_epoch)),
            "mlm_head_was_missing": result.mlm_head_was_missing,
            "head_warmup_epochs": result.head_warmup_epochs,
            "train_texts": result.train_texts,
            "train_samples_per_second": result.train_samples_per_second,
        },
        check_results=checks,
        data_version=content_version(manifest.content_sha256()),
    )
