"""Small assets on the real stage store, for the lineage tests: cheap enough to run many times, in processes.

``source_text`` writes its configured text (and can fail its blocking gate); ``shouted_text`` reads the
``source_text`` output its lineage names and writes it upper-cased. ``daily_text`` and ``daily_summary`` are
the same pair, partitioned by day. The store's root comes from LINEAGE_TEST_ROOT.
"""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import os
import time
from pathlib import Path

import dagster as dg

from assets.stage_records import content_version, raise_if_gates_failed
from resources.stage_store import StageStore, lineage_metadata

BARRIER_TIMEOUT_S = 120.0


class SourceConfig(dg.Config):
    text: str = "hello"
    gate_passes: bool = True
    barrier_dir: str | None = None  # wait here until this many runs have written their source
    barrier_parties: int = 2


def _wait_for_companions(config: SourceConfig) -> None:
    """Hold this run until every party has written its source, so downstream steps run after all of them."""
    if config.barrier_dir is None:
        return
    barrier = Path(config.barrier_dir)
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / config.text).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(barrier.iterdir())) < config.barrier_parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other runs never reached {barrier}")
        time.sleep(0.05)


@dg.asset(check_specs=[dg.AssetCheckSpec("text_accepted", asset="source_text", blocking=True)])
def source_text(context: dg.AssetExecutionContext, config: SourceConfig, stage_store: StageStore) -> dg.MaterializeResult:
    directory = stage_store.output_dir(context)
    (directory / "text.txt").write_text(config.text)
    checks = raise_if_gates_failed(
        context, [dg.AssetCheckResult(check_name="text_accepted", passed=config.gate_passes, description=f"text {config.text!r}")]
    )
    stored = stage_store.save(context, directory)
    _wait_for_companions(config)
    return dg.MaterializeResult(metadata={**stored, "text": config.text}, check_results=checks, data_version=content_version(config.text))


@dg.asset(deps=[source_text])
def shouted_text(context: dg.AssetExecutionContext, stage_store: StageStore) -> dg.MaterializeResult:
    upstream = stage_store.upstream(context, "source_text")
    text = (upstream.path / "text.txt").read_text()
    directory = stage_store.output_dir(context)
    (directory / "text.txt").write_text(text.upper())
    return dg.MaterializeResult(
        metadata={**stage_store.save(context, directory), **lineage_metadata(upstream), "read": text},
        data_version=content_version(text.upper()),
    )


DAYS = dg.DailyPartitionsDefinition(start_date="2026-11-01")


@dg.asset(partitions_def=DAYS)
def daily_text(context: dg.AssetExecutionContext, config: SourceConfig, stage_store: StageStore) -> dg.MaterializeResult:
    directory = stage_store.output_dir(context)
    (directory / "text.txt").write_text(f"{config.text} on {context.partition_key}")
    return dg.MaterializeResult(metadata=stage_store.save(context, directory))


@dg.asset(partitions_def=DAYS, deps=[daily_text])
def daily_summary(context: dg.AssetExecutionContext, stage_store: StageStore) -> dg.MaterializeResult:
    upstream = stage_store.upstream(context, "daily_text")
    text = (upstream.path / "text.txt").read_text()
    directory = stage_store.output_dir(context)
    (directory / "summary.txt").write_text(text.upper())
    return dg.MaterializeResult(metadata={**stage_store.save(context, directory), **lineage_metadata(upstream), "read": text})


@dg.asset(pool="training")
def pooled_step(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Holds the `training` pool's slot and records when (POOL_TEST_SPANS).

    The first holder announces itself (POOL_TEST_STARTED) and keeps the slot until the instance shows another
    step queued for the pool, so the test sees the second run blocked rather than merely started later.
    """
    started = time.time()
    spans = Path(os.environ["POOL_TEST_SPANS"])
    first = not spans.exists()
    Path(os.environ["POOL_TEST_STARTED"]).touch()
    saw_waiting_peer = False
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while first and time.monotonic() < deadline:
        if context.instance.event_log_storage.get_concurrency_info("training").pending_step_count > 0:
            saw_waiting_peer = True
            break
        time.sleep(0.1)
    time.sleep(0.5)
    with open(spans, "a") as lines:
        lines.write(f"{started} {time.time()} {int(saw_waiting_peer)}\n")
    return dg.MaterializeResult()


defs = dg.Definitions(
    assets=[source_text, shouted_text, daily_text, daily_summary, pooled_step],
    jobs=[dg.define_asset_job("texts", selection=["source_text", "shouted_text"])],
    resources={"stage_store": StageStore(root=dg.EnvVar("LINEAGE_TEST_ROOT"), cache_dir=dg.EnvVar("LINEAGE_TEST_CACHE"))},
)


def texts_job() -> dg.JobDefinition:
    return defs.resolve_job_def("texts")
