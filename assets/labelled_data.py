"""The labelled data every stage trains and is scored on: loaded, validated, de-duplicated and split."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json

import dagster as dg
from pydantic import Field

from assets.stage_records import content_version
from resources.stage_store import StageStore
from tl_platform.data import (
    DatasetSource,
    LabelSchema,
    SplitFractions,
    load_labelled_text,
    stratified_split,
)
from tl_platform.data.bundled import BUNDLED_DOMAINS, bundled_source


class LabelledDataConfig(dg.Config):
    """A bundled domain by default; any other dataset by ``path`` with its columns and label set."""

    domain: str = Field(default="amazon", description=f"bundled domain, one of {sorted(BUNDLED_DOMAINS)}; unused with path")
    path: str | None = Field(default=None, description="a CSV, TSV, JSONL or Parquet file, or a file:// URI")
    format: str | None = Field(default=None, description="csv, tsv, jsonl or parquet; from the suffix when omitted")
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = Field(default=None, description="the allowed raw label values (required with path)")
    label_names: list[str] | None = Field(default=None, description="readable class names, one per label")
    split_seed: int = 42
    train_fraction: float = 0.7
    validation_fraction: float = 0.1
    test_fraction: float = 0.2

    def source(self) -> DatasetSource:
        if self.path is None:
            return bundled_source(self.domain)
        if not self.labels:
            raise ValueError("labelled_data.labels must list the allowed label values when a path is given")
        schema = LabelSchema(labels=tuple(self.labels), names=tuple(self.label_names or ()))
        return DatasetSource(
            path=self.path,
            schema=schema,
            text_column=self.text_column,
            label_column=self.label_column,
            format=self.format,  # type: ignore[arg-type]
        )


@dg.asset(group_name="transfer", kinds={"python"}, code_version="2")
def labelled_data(
    context: dg.AssetExecutionContext, config: LabelledDataConfig, stage_store: StageStore
) -> dg.MaterializeResult:
    """Labelled text of the target domain, validated against its label schema and split train/validation/test.

    Every row that fails validation is named with its line; repeated and conflicting texts are counted, not
    silently dropped. The splits are stratified by class and fixed by a seed, and each carries a content hash
    so that every later stage can say exactly which data it saw.
    """
    dataset = load_labelled_text(config.source())
    fractions = SplitFractions(config.train_fraction, config.validation_fraction, config.test_fraction)
    splits = stratified_split(dataset, fractions, config.split_seed)
    directory = stage_store.output_dir(context)
    splits.write_jsonl(directory)
    hashes = {"dataset": dataset.content_hash(), **splits.hashes()}
    stored = stage_store.save(context, directory)
    duplicates = dataset.duplicates
    return dg.MaterializeResult(
        metadata={
            "source": dataset.source,
            "rows_read": dataset.rows_read,
            "rows_kept": len(dataset),
            "exact_duplicates_dropped": duplicates.exact_duplicates,
            "conflicting_texts_dropped": duplicates.conflicting_texts,
            "conflicting_rows_dropped": duplicates.conflicting_rows,
            "label_counts": dg.MetadataValue.json(dataset.label_counts()),
            "split_sizes": dg.MetadataValue.json({n: len(s) for n, s in splits.by_name().items()}),
            "content_hashes": dg.MetadataValue.json(hashes),
            "split_seed": config.split_seed,
            # the config that made it, so a plan's run config can repeat it (transfer_plan)
            "config": dg.MetadataValue.json(config.model_dump()),
            **stored,
        },
        data_version=content_version(json.dumps(hashes, sort_keys=True)),
    )
