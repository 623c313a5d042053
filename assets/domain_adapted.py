"""Continued masked-language-model pretraining of the foundation encoder on the target domain's own text."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
import shutil
from collections.abc import Iterator
from typing import Any

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
from tl_platform.data.corpus import CorpusSource, UnlabelledCorpus, load_corpus
from tl_platform.data.splits import read_splits
from tl_platform.models.foundation import load_tokenizer
from tl_platform.training.config import DomainAdaptationConfig
from tl_platform.training.domain_adaptation import adapt_to_domain

PERPLEXITY_CHECK = "heldout_perplexity_fell"
CORPUS_FIELDS = {"corpus_path", "corpus_text_column", "corpus_text_unit"}


class DomainAdaptedConfig(dg.Config):
    """The fields of ``DomainAdaptationConfig`` (validated there, with messages naming the field), and where an
    unlabelled in-domain corpus is (read by ``tl_platform.data.corpus``; its bounds keep their defaults)."""

    enabled: bool = Field(default=True, description="false passes the foundation model through unchanged")
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    mlm_probability: float = 0.15
    max_length: int = 64
    truncation: str = Field(
        default="head",
        description="texts longer than max_length: head keeps their first tokens; chunks trains on all of them in "
        "windows of max_length tokens (tlp plan sets chunks where it sets head_tail for fine-tuning)",
    )
    head_warmup_epochs: int = 3
    head_warmup_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42
    corpus_path: str | None = Field(
        default=None,
        description="unlabelled in-domain text to train on besides the training split: a .txt, .csv, .tsv, .jsonl, "
        ".ndjson or .parquet file, or a folder of them (read recursively)",
    )
    corpus_text_column: str = Field(default="text", description="the column (CSV, TSV, Parquet) or field (JSONL) holding the text")
    corpus_text_unit: str = Field(default="line", description="in .txt files, one document per 'line' or per 'paragraph'")

    def to_library(self) -> DomainAdaptationConfig:
        return DomainAdaptationConfig(**self.model_dump(exclude=CORPUS_FIELDS))

    def corpus_source(self) -> CorpusSource | None:
        if self.corpus_path is None:
            return None
        return CorpusSource(self.corpus_path, text_column=self.corpus_text_column, text_unit=self.corpus_text_unit)  # type: ignore[arg-type]


# A one-asset multi_asset rather than @dg.asset only for can_subset=True: it makes the check's output optional,
# so a disabled stage can leave the check unevaluated (Dagster shows it skipped) instead of reporting a pass.
@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "domain_adapted_model",
            group_name="transfer",
            kinds={"pytorch", "mlflow"},
            deps=["foundation_model", "labelled_data"],
            code_version="4",  # 4: truncation (head or chunks) for long texts
        )
    ],
    pool="training",
    check_specs=[
        dg.AssetCheckSpec(
            PERPLEXITY_CHECK,
            asset="domain_adapted_model",
            blocking=True,
            description="MLM perplexity on held-out in-domain text must be lower after adaptation than before",
        )
    ],
    can_subset=True,
)
def domain_adapted_model(
    context: dg.AssetExecutionContext,
    config: DomainAdaptedConfig,
    stage_store: StageStore,
    mlflow: MlflowTracking,
) -> Iterator[dg.MaterializeResult]:  # a generator: only a generator may leave a check without a result
    """The foundation encoder after continued MLM pretraining on unlabelled text of the target domain.

    Trains on the texts of the training split (labels unused), plus an unlabelled in-domain corpus when
    ``corpus_path`` names one, and measures perplexity on the held-out texts (validation and test) with one fixed
    masking, before and after. The corpus is de-duplicated, and cleared of the held-out texts so that perplexity
    is measured on text the model never trained on; the metadata counts what was read, kept and dropped. An
    encoder whose perplexity did not fall fails the step: nothing is materialised, and fine-tuning never starts
    from it. Disabled by config, the foundation model passes through.
    """
    settings = config.to_library()
    corpus_source = config.corpus_source()
    upstream_foundation = stage_store.upstream(context, "foundation_model")
    foundation = verify_bundle(upstream_foundation.path / "bundle", expected_stage="foundation")
    with mlflow.run_for_asset(context) as tracker:
        tracker.log_params({f"domain_adaptation.{k}": v for k, v in settings.to_json().items()})
        if corpus_source is not None:
            tracker.log_params({f"domain_adaptation.corpus.{k}": v for k, v in corpus_source.to_json().items()})
        if not settings.enabled:
            tracker.set_tags({"skipped": "true"})
            yield dg.MaterializeResult(
                metadata={
                    **tracking_metadata(tracker, None),
                    **stage_store.pass_through(upstream_foundation),
                    **lineage_metadata(upstream_foundation),
                    **bundle_metadata(foundation),
                    "skipped": True,
                    "check_not_evaluated": f"{PERPLEXITY_CHECK}: stage disabled by config, nothing was trained",
                },
                # No result for the perplexity check: a pass would claim a judgement nobody made. Dagster (1.13)
                # then shows the check as skipped (not executed) in a successful run, and a blocking check with
                # no result does not hold back downstream.
                data_version=content_version(foundation.content_sha256()),
            )
            return

        data = stage_store.upstream(context, "labelled_data")
        splits = read_splits(data.path)
        log_split_inputs(tracker, splits)  # train texts are trained on (labels unused); the rest measure perplexity
        heldout_texts = splits.validation.texts + splits.test.texts
        corpus = None
        if corpus_source is not None:
            corpus = load_corpus(corpus_source, heldout_texts=heldout_texts, training_texts=splits.train.texts)
            tracker.log_metrics({f"corpus_{k}": float(v) for k, v in corpus.report.counts().items()})
        tokenizer = load_tokenizer(str(foundation.path / "tokenizer"))
        directory = stage_store.output_dir(context)
        result = adapt_to_domain(
            foundation.path / "model",
            tokenizer,
            train_texts=splits.train.texts + (corpus.texts if corpus is not None else ()),
            heldout_texts=heldout_texts,
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
        corpus_hashes = {"corpus": corpus.content_hash()} if corpus is not None else {}
        provenance = capture_provenance(
            stage="domain_adapted",
            config={**settings.to_json(), **({"corpus": corpus_source.to_json()} if corpus_source is not None else {})},
            seeds={"training": settings.seed, "heldout_masking": settings.seed},
            data_hashes={**splits.hashes(), **corpus_hashes},
            parent_bundle=foundation.bundle_sha256,
            extra={"mlm_head_was_missing": result.mlm_head_was_missing, "mlm_loss": result.mlm_loss},
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
    yield dg.MaterializeResult(
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
            "train_windows": result.train_windows,
            "truncation": settings.truncation,
            "train_samples_per_second": result.train_samples_per_second,
            "mlm_loss": result.mlm_loss,
            **corpus_metadata(corpus),
        },
        check_results=checks,
        data_version=content_version(manifest.content_sha256()),
    )


def corpus_metadata(corpus: UnlabelledCorpus | None) -> dict[str, Any]:
    """What the corpus contributed, as the Dagster UI shows it; nothing when no corpus was given."""
    if corpus is None:
        return {}
    report = corpus.report
    return {
        "corpus": dg.MetadataValue.path(report.source),
        "corpus_counts": dg.MetadataValue.json(report.counts()),
        "corpus_documents_kept": report.kept,
        "corpus_sha256": corpus.content_hash(),
        **({"corpus_skipped_examples": dg.MetadataValue.json(list(report.skipped_examples))} if report.skipped_examples else {}),
    }
