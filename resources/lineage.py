"""Which upstream materialisation a step reads: the one its run made, else its parent run's, else the latest.

The rule, in order:

1. The upstream was materialised in this run: that materialisation. Two runs at once each read their own,
   never whichever finished last.
2. This run re-executes steps of an earlier run (Dagster's re-execution): the materialisation its parent run
   (or the parent's parent) made, so re-running one step of an old run reads what that run read.
3. Otherwise, the newest materialisation of the upstream asset (and partition), which is also what Dagster
   records as the input's data version.

A materialisation exists only when its gates passed (a failed gate fails the step; see
``assets.stage_records.raise_if_gates_failed``), so every candidate here is usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"
MAX_PARENT_RUNS = 32  # a re-execution chain longer than this is a bug, not a lineage


@dataclass(frozen=True)
class UpstreamMaterialisation:
    asset_key: str
    partition: str | None
    run_id: str
    storage_id: int
    data_version: str | None
    metadata: dict[str, Any]
    how: str  # "this run", "parent run <id>" or "latest materialisation"


def upstream_partition(context: dg.AssetExecutionContext, key: dg.AssetKey) -> str | None:
    """The upstream partition this step reads: the same key when both are partitioned alike, else none."""
    layer = context.job_def.asset_layer
    upstream_def = layer.get(key).partitions_def if layer.has(key) else None
    if upstream_def is None:
        return None
    if not context.has_partition_key:
        raise ValueError(
            f"{context.asset_key.to_user_string()} is not partitioned but its upstream {key.to_user_string()} is; "
            "partition the downstream asset the same way"
        )
    downstream_def = layer.get(context.asset_key).partitions_def if layer.has(context.asset_key) else None
    if downstream_def != upstream_def:
        raise ValueError(
            f"{context.asset_key.to_user_string()} and its upstream {key.to_user_string()} are partitioned "
            "differently; only identical partitions are read one to one"
        )
    return context.partition_key


def find_upstream_materialisation(context: dg.AssetExecutionContext, key: dg.AssetKey) -> UpstreamMaterialisation | None:
    instance = context.instance
    partition = upstream_partition(context, key)
    run_id: str | None = context.run_id
    how = "this run"
    for depth in range(MAX_PARENT_RUNS):
        if run_id is None:
            break
        found = materialisation_in_run(instance, run_id, key, partition)
        if found is not None:
            return describe_record(found, key, partition, how)
        run = instance.get_run_by_id(run_id)
        run_id = run.parent_run_id if run is not None else None
        how = f"parent run {run_id}" if depth == 0 else f"ancestor run {run_id}"
    records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    latest = instance.fetch_materializations(records_filter, limit=1).records
    return describe_record(latest[0], key, partition, "latest materialisation") if latest else None


def materialisation_in_run(
    instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey, partition: str | None
) -> dg.EventLogRecord | None:
    # Through the asset index, not the run's own event log: on SQLite each run's log numbers its events
    # itself, and only the index's storage ids name one materialisation across the whole instance.
    run = instance.get_run_record_by_id(run_id)
    if run is None:
        return None
    records_filter = dg.AssetRecordsFilter(
        asset_key=key,
        asset_partitions=[partition] if partition else None,
        after_timestamp=run.create_timestamp.timestamp() - 1.0,
    )
    cursor = None
    while True:  # newest first; only materialisations made since the run was created are read
        page = instance.fetch_materializations(records_filter, limit=100, cursor=cursor)
        for record in page.records:
            if record.run_id == run_id:
                return record
        if not page.has_more:
            return None
        cursor = page.cursor


def describe_record(record: dg.EventLogRecord, key: dg.AssetKey, partition: str | None, how: str) -> UpstreamMaterialisation:
    materialisation = record.asset_materialization
    if materialisation is None:  # the queries above ask for materialisations only
        raise TypeError(f"event {record.storage_id} is not a materialisation of {key.to_user_string()}")
    return UpstreamMaterialisation(
        asset_key=key.to_user_string(),
        partition=partition,
        run_id=record.run_id,
        storage_id=record.storage_id,
        data_version=(materialisation.tags or {}).get(DATA_VERSION_TAG),
        metadata=dict(materialisation.metadata),
        how=how,
    )
