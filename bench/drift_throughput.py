"""Drift throughput: the feature_drift computation, read included, against Evidently's DataDriftPreset, in one run.

Builds a prediction log in the real backend (SQLite through PredictionLog's migrations; Postgres too when a
server answers at --postgres-url, in a throwaway table prefix dropped afterwards) holding --rows served rows of
model version "3" for one day, plus 5% as many rows of a challenger "4" interleaved (the window must leave them
out). The day's traffic is shifted on purpose: texts about 1.8x longer (log-length +0.6, so text_chars,
token_count and truncated move) and the positive label's share from 0.55 to 0.72; confidence moves a little
(below the thresholds) and the projection not at all. The reference profile comes from unshifted traffic.

Then, each in a fresh process (so peak memory is its own):
  ours      read_window (a bounded sample of the day, exact row count) + detect_drift; median of --repeats
            runs after one warm-up, the read and the drift timed apart;
  ours-all  the same reading every row (max_rows=None), once: what exactness costs;
  evidently the full day read into a frame (timed apart), then Report([DataDriftPreset]) with its tests set to
            ours (kl_div on numeric, jensenshannon on categorical, our thresholds), once after a small warm-up.
It prints the times, the ratios, each column's verdict side by side, and memory: the peak the path allocates
(tracemalloc, ours) and each process's peak RSS above what its imports took.

    .venv/bin/python bench/drift_throughput.py                    # 1,000,000 rows, SQLite and Postgres if up
    .venv/bin/python bench/drift_throughput.py --rows 20000 --backends sqlite
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tl_platform.monitoring.drift import DriftThresholds, detect_drift
from tl_platform.monitoring.evidently_report import matched_preset_options
from tl_platform.monitoring.reference import ReferenceConfig, ReferenceProfile, build_reference
from tl_platform.monitoring.window import DEFAULT_MAX_ROWS, read_window, served_versions
from tl_platform.serving.prediction_log import PredictionLog
from tl_platform.simulation.features import synthetic_features

VERSION, OTHER_VERSION = "3", "4"
DAY = datetime(2025, 3, 1, tzinfo=UTC)
K = 4


def traffic(rng: np.random.Generator, n: int, shifted: bool) -> dict[str, np.ndarray]:
    """The bench's traffic: when shifted, texts about 1.8x longer, more positives, slightly lower confidence."""
    if shifted:
        return synthetic_features(rng, n, length_shift=0.6, positive_share=0.72, confidence_shape=1.1)
    return synthetic_features(rng, n)


def reference_profile(seed: int) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    input_frame = pd.DataFrame(traffic(rng, 4000, shifted=False))
    model_frame = pd.DataFrame(traffic(rng, 1500, shifted=False))
    return build_reference(input_frame, model_frame, ReferenceConfig())


def fill_log(log: PredictionLog, rows: int, seed: int) -> float:
    """Insert the day's rows through the log's own table; return seconds taken."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    extra = rows // 20
    total = rows + extra
    versions = np.full(total, VERSION, dtype=object)
    versions[rng.choice(total, extra, replace=False)] = OTHER_VERSION
    seconds = np.sort(rng.uniform(0, 86_400, total))
    features = traffic(rng, total, shifted=True)
    p = log.predictions
    names = ["request_id", "item_index", "role", "ts", "variant", "model_version", "label", "confidence",
             "latency_ms", "text_chars", "token_count", "unknown_share", "truncated", "routing_salt",
             "challenger_share", *(f"projection_{i}" for i in range(K))]
    batch = 50_000
    with log.engine.begin() as connection:
        for lo in range(0, total, batch):
            hi = min(total, lo + batch)
            records = [
                {
                    "request_id": f"req-{i:09d}", "item_index": 0, "role": "served",
                    "ts": DAY + timedelta(seconds=float(seconds[i])),
                    "variant": "champion" if versions[i] == VERSION else "challenger", "model_version": versions[i],
                    "label": str(features["label"][i]), "confidence": float(features["confidence"][i]),
                    "latency_ms": 4.0, "text_chars": int(features["text_chars"][i]),
                    "token_count": int(features["token_count"][i]),
                    "unknown_share": float(features["unknown_share"][i]), "truncated": bool(features["truncated"][i]),
                    "routing_salt": "bench", "challenger_share": 0.05,
                    **{f"projection_{k}": float(features[f"projection_{k}"][i]) for k in range(K)},
                }
                for i in range(lo, hi)
            ]
            connection.execute(sa.insert(p), [{n: r[n] for n in names} for r in records])
    return time.perf_counter() - started


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    read_seconds: list[float] = field(default_factory=list)
    verdicts: dict[str, tuple[float, bool]] = field(default_factory=dict)
    rows: int = 0
    rows_used: int = 0
    baseline_mb: float = 0.0
    peak_mb: float = 0.0
    traced_mb: float | None = None
    note: str = ""


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _ours(url: str, prefix: str, profile_json: dict[str, Any], repeats: int, max_rows: int | None) -> Measured:
    profile = ReferenceProfile.from_json(profile_json)
    log = PredictionLog(url, table_prefix=prefix, migrate=False)
    end = DAY + timedelta(days=1)
    thresholds = DriftThresholds()
    measured = Measured(baseline_mb=_rss_mb())
    for run in range(repeats + 1):  # the first run warms caches and is not counted
        started = time.perf_counter()
        window = read_window(log, VERSION, DAY, end, profile.numeric_features, profile.categorical_features, max_rows)
        read = time.perf_counter() - started
        result = detect_drift(profile, window, thresholds)
        if run > 0:
            measured.seconds.append(time.perf_counter() - started)
            measured.read_seconds.append(read)
    measured.verdicts = {f.feature: (float(f.score or 0.0), f.drifted) for f in result.features}
    if result.multivariate is not None:
        measured.verdicts["projection (mmd)"] = (float(result.multivariate.mmd2 or 0.0), result.multivariate.drifted)
    measured.rows, measured.rows_used = result.rows, result.rows_used
    measured.note = result.summary()
    measured.peak_mb = _rss_mb()
    tracemalloc.start()  # one more, untimed run: the peak of what the path allocates (NumPy arrays included)
    window = read_window(log, VERSION, DAY, end, profile.numeric_features, profile.categorical_features, max_rows)
    detect_drift(profile, window, thresholds)
    measured.traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    log.close()
    return measured


def _evidently(url: str, prefix: str, profile_json: dict[str, Any]) -> Measured:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    profile = ReferenceProfile.from_json(profile_json)
    log = PredictionLog(url, table_prefix=prefix, migrate=False)
    numeric, categorical = list(profile.numeric_features), list(profile.categorical_features)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    options = matched_preset_options(DriftThresholds())
    reference = Dataset.from_pandas(profile.sample_frame(), data_definition=definition)
    small = profile.sample_frame().dropna()
    Report([DataDriftPreset(**options)]).run(Dataset.from_pandas(small, data_definition=definition), reference)
    measured = Measured(baseline_mb=_rss_mb())
    started = time.perf_counter()
    window = read_window(log, VERSION, DAY, DAY + timedelta(days=1), numeric, categorical, max_rows=None)
    frame = pd.DataFrame(window.columns)
    read = time.perf_counter() - started
    snapshot = Report([DataDriftPreset(**options)]).run(Dataset.from_pandas(frame, data_definition=definition), reference)
    measured.seconds.append(time.perf_counter() - started)
    measured.read_seconds.append(read)
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            value = float(metric["value"])
            measured.verdicts[config["column"]] = (value, value >= float(config["threshold"]))
    measured.rows = measured.rows_used = len(frame)
    measured.peak_mb = _rss_mb()
    log.close()
    return measured


def _child(queue: Any, name: str, args: tuple[Any, ...]) -> None:
    functions: dict[str, Callable[..., Measured]] = {"ours": _ours, "evidently": _evidently}
    queue.put(functions[name](*args))


def in_fresh_process(name: str, *args: Any) -> Measured:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, name, args))
    process.start()
    result: Measured = queue.get()
    process.join()
    return result


def bench_backend(label: str, url: str, prefix: str, args: argparse.Namespace, profile: ReferenceProfile) -> None:
    log = PredictionLog(url, table_prefix=prefix)
    try:
        built = fill_log(log, args.rows, args.seed + 1)
        started = time.perf_counter()
        versions = served_versions(log, DAY, DAY + timedelta(days=1), variant=None)
        versions_s = time.perf_counter() - started
        print(f"\n== {label}: {args.rows:,} rows of version {VERSION} on {DAY.date()} (+{args.rows // 20:,} of "
              f"version {OTHER_VERSION} interleaved), built in {built:.1f} s; served_versions {versions} in {versions_s:.3f} s")
        profile_json = profile.to_json()
        ours = in_fresh_process("ours", url, prefix, profile_json, args.repeats, args.max_rows)
        exact = in_fresh_process("ours", url, prefix, profile_json, 1, None)
        theirs = in_fresh_process("evidently", url, prefix, profile_json)
    finally:
        log.drop_tables()
        log.close()
    median = statistics.median(ours.seconds)
    read = statistics.median(ours.read_seconds)
    preset = theirs.seconds[0] - theirs.read_seconds[0]
    print(f"ours      : {median:.3f} s median of {len(ours.seconds)} (read {read:.3f} s + drift {median - read:.3f} s), "
          f"{ours.rows_used:,} of {ours.rows:,} rows sampled; allocated at peak {ours.traced_mb:.1f} MB "
          f"(tracemalloc), process peak RSS {ours.peak_mb:.0f} MB (+{ours.peak_mb - ours.baseline_mb:.0f} over imports)")
    print(f"ours-all  : {exact.seconds[0]:.3f} s (read {exact.read_seconds[0]:.3f} s) on every row; allocated at peak "
          f"{exact.traced_mb:.0f} MB, process peak RSS +{exact.peak_mb - exact.baseline_mb:.0f} MB over imports")
    print(f"evidently : {preset:.3f} s DataDriftPreset ({options_text()}) + {theirs.read_seconds[0]:.3f} s to read the "
          f"day into a frame; process peak RSS {theirs.peak_mb:.0f} MB (+{theirs.peak_mb - theirs.baseline_mb:.0f} over imports)")
    print(f"ratio     : {preset / median:.1f}x against the preset alone, {theirs.seconds[0] / median:.1f}x against "
          f"read + preset; ours-all {theirs.seconds[0] / exact.seconds[0]:.1f}x against read + preset")
    print(f"verdict   : {ours.note}")
    print(f"{'column':<18}{'ours (sample)':>22}{'ours (every row)':>22}{'evidently':>22}  same")
    disagreements = 0
    for column, (score, drifted) in ours.verdicts.items():
        all_score, all_drifted = exact.verdicts[column]
        their = theirs.verdicts.get(column)
        same = their is None or their[1] == drifted
        disagreements += not (same and all_drifted == drifted)
        shown = "n/a (no MMD)" if their is None else f"{their[0]:.4f} {'DRIFT' if their[1] else 'ok'}"
        print(f"{column:<18}{score:>14.4f} {'DRIFT' if drifted else 'ok':>7}{all_score:>14.4f} "
              f"{'DRIFT' if all_drifted else 'ok':>7}{shown:>22}  {'yes' if same else 'NO'}")
    print(f"columns whose verdicts differ: {disagreements}")


def options_text() -> str:
    options = matched_preset_options(DriftThresholds())
    return f"{options['num_method']} >= {options['num_threshold']}, {options['cat_method']} >= {options['cat_threshold']}"


def postgres_up(url: str) -> bool:
    try:
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception as err:  # no server: the bench runs SQLite only, and says so
        print(f"(Postgres at {url} not reachable: {type(err).__name__}; skipped)")
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="our window's sample bound")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rows < 1_000:
        parser.error("--rows must be at least 1000")
    print(f"drift throughput: {os.cpu_count()} CPUs; reference: 4,000 input rows, 1,500 model rows, "
          f"{ReferenceConfig().bins} bins, K={K}")
    profile = reference_profile(args.seed)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as directory:
            bench_backend("SQLite", f"sqlite:///{Path(directory) / 'log.db'}", "", args, profile)
    if "postgres" in backends and postgres_up(args.postgres_url):
        bench_backend("Postgres", args.postgres_url, f"bench_drift_{os.getpid()}_", args, profile)


if __name__ == "__main__":
    main()
