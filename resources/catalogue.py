"""Stage outputs as the Dagster catalogue records them, for commands outside a run (`tlp report`, benches).

``python -m resources.catalogue transfer_plan roi_curve roi_curve:cost_report`` prints, as JSON, the local
directory of each asset's newest materialisation; ``a:b`` names the ``b`` output that the newest ``a`` read,
so a report shows one consistent lineage even when ``b`` was materialised again since.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import dagster as dg

from resources.environment import resources_for_environment
from resources.lineage import UpstreamMaterialisation, describe_record, materialisation_in_run
from resources.stage_store import LINEAGE_METADATA_KEY, StageOutputError, StageStore


def newest(instance: dg.DagsterInstance, asset: str) -> UpstreamMaterialisation:
    key = dg.AssetKey.from_user_string(asset)
    records = instance.fetch_materializations(key, limit=1).records
    if not records:
        raise StageOutputError(f"{asset} has never been materialised in this Dagster instance; materialise {asset} first")
    return describe_record(records[0], key, None, "latest materialisation")


def read_by(instance: dg.DagsterInstance, reader: UpstreamMaterialisation, asset: str) -> UpstreamMaterialisation:
    """The ``asset`` materialisation that ``reader`` recorded reading (its ``upstream_versions``)."""
    entry = reader.metadata.get(LINEAGE_METADATA_KEY)
    read = (entry.value if entry is not None else {}).get(asset)
    if not isinstance(read, dict) or "run_id" not in read:
        raise StageOutputError(f"{reader.asset_key} (run {reader.run_id}) recorded no {asset} it read; re-materialise it")
    key = dg.AssetKey.from_user_string(asset)
    record = materialisation_in_run(instance, read["run_id"], key, read.get("partition"))
    if record is None:
        raise StageOutputError(f"the {asset} of run {read['run_id']} read by {reader.asset_key} is gone from the catalogue")
    return describe_record(record, key, read.get("partition"), f"read by {reader.asset_key}")


def locate(instance: dg.DagsterInstance, store: StageStore, specs: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for spec in specs:
        reader_name, _, asset = spec.partition(":")
        materialisation = newest(instance, reader_name)
        if asset:
            materialisation = read_by(instance, materialisation, asset)
        found[spec] = str(store.open(materialisation).path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    specs = list(sys.argv[1:] if argv is None else argv)
    if not specs:
        print("usage: python -m resources.catalogue ASSET[:UPSTREAM] ...", file=sys.stderr)
        return 2
    store = resources_for_environment()["stage_store"]
    assert isinstance(store, StageStore)
    try:
        with dg.DagsterInstance.get() as instance:
            print(json.dumps(locate(instance, store, specs)))
    except StageOutputError as err:
        print(f"catalogue: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
