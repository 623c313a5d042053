"""Serving throughput and latency, in one run, on the fine-tuned model of the main job.

Starts each server as its own process on this machine and drives it over HTTP from a thread pool:

- this server with INT8 ONNX, FP32 ONNX and PyTorch FP32 eager (all with dynamic batching and length buckets);
- this server with INT8 ONNX one request at a time (one worker, batch size 1, all its threads), the baseline of
  batching;
- ``mlflow models serve`` of the same fine-tuned model (Transformers flavour, local env manager).

All servers run at once and are driven in turn, round after round (default 3), so that every ratio compares
figures taken minutes apart at most on this shared machine. At concurrency 1, 8 and 32 it prints the medians
over rounds of requests/s and p50/p99 latency, then the ratios the serving issue targets (median and range
over rounds), and the eval-suite accuracy of each server against PyTorch's (the eval suite the export's gates
judged: validation and test). Run the main job first (make demo).

    .venv/bin/python bench/serving_throughput.py
    .venv/bin/python bench/serving_throughput.py --requests 200 --skip-mlflow
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np

from tl_platform.checkpoints import verify_bundle
from tl_platform.data.schema import LabelSchema
from tl_platform.data.splits import read_split_jsonl
from tl_platform.economics.serving import REPLICA_THROUGHPUT_KEY
from tl_platform.export.exported_bundle import EVAL_SUITE_FILE
from tl_platform.export.gates import mcnemar_exact_p
from tl_platform.serving.deployment import DeploymentRecord, VariantSpec, write_deployment_record

CONCURRENCIES = (1, 8, 32)


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class Connection:
    """One keep-alive HTTP/1.1 connection of the load generator (the standard library's client: the load
    generator shares the machine's cores with the server under test, so it should spend as little CPU as it can)."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60.0)

    def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        self._connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._connection.close()


def drive(
    send: Callable[[Connection, str], None], port: int, texts: Sequence[str], concurrency: int, requests: int
) -> LoadResult:
    """Send ``requests`` single-text requests from ``concurrency`` threads; time each one."""
    latencies: list[float] = []
    errors = 0
    connections = [Connection(port) for _ in range(concurrency)]

    def worker(index: int) -> tuple[list[float], int]:
        connection, mine, failed = connections[index], [], 0
        for i in range(index, requests, concurrency):
            started = time.perf_counter()
            try:
                send(connection, texts[i % len(texts)])
            except (OSError, http.client.HTTPException, RuntimeError):
                failed += 1
                connection.close()  # reconnects on the next request
                continue
            mine.append((time.perf_counter() - started) * 1000.0)
        return mine, failed

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for mine, failed in pool.map(worker, range(concurrency)):
            latencies.extend(mine)
            errors += failed
    seconds = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return LoadResult(
        concurrency, len(latencies), seconds, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), errors
    )


class BenchServer(Protocol):
    """A server under load: where it listens, how one text is sent to it, how it is stopped."""

    name: str
    port: int

    def send(self, connection: Connection, text: str) -> None: ...

    def stop(self) -> None: ...


class PlatformServer:
    """This project's server on one deployment record, as a subprocess."""

    def __init__(
        self, name: str, variant: VariantSpec, workdir: Path, threads: int, max_batch_size: int,
        max_wait_ms: float = 0.0, batch_workers: int = 1,
    ) -> None:
        self.name = name
        self.port = free_port()
        record = workdir / f"{name}.json"
        write_deployment_record(record, DeploymentRecord(champion=variant))
        command = [
            sys.executable, "-m", "tl_platform.serving", "--deployment", str(record),
            "--log-url", f"sqlite:///{workdir / (name + '.db')}", "--port", str(self.port),
            "--threads", str(threads), "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
            "--batch-workers", str(batch_workers),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{self.port}/readyz", self.process)

    def send(self, connection: Connection, text: str) -> None:
        status, body = connection.post_json("/predict", {"text": text, "unit_id": "bench"})
        if status != 200:
            raise RuntimeError(f"{self.name}: HTTP {status} {body[:200]!r}")

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        """One request per text, one at a time: how the throughput runs send them. (Dynamic INT8 quantisation
        scales activations per batch, so an INT8 prediction can depend on which texts share its batch.)"""
        labels: list[str] = []
        with httpx.Client(timeout=120.0) as client:
            for text in texts:
                response = client.post(f"http://127.0.0.1:{self.port}/predict", json={"text": text, "unit_id": "a"})
                response.raise_for_status()
                labels.append(response.json()["predictions"][0]["label"])
        return labels

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class MlflowServer:
    """``mlflow models serve`` of the fine-tuned model, Transformers flavour, local env manager."""

    def __init__(self, task_bundle: Path, workdir: Path) -> None:
        import mlflow
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = "mlflow models serve"
        model = AutoModelForSequenceClassification.from_pretrained(task_bundle / "model", use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(task_bundle / "tokenizer")
        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        # Explicit requirements: inferring them imports torchvision, which fails beside this torch build.
        requirements = [f"mlflow=={mlflow.__version__}", "torch", "transformers"]
        with mlflow.start_run():
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="classifier",
                task="text-classification",
                pip_requirements=requirements,
            )
        self.port = free_port()
        # mlflow serve execs `uvicorn` from PATH: put this environment's bin directory first
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
        command = [mlflow_bin, "models", "serve", "-m", info.model_uri, "--env-manager", "local",
                   "-p", str(self.port), "-h", "127.0.0.1"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{self.port}/ping", self.process)

    def send(self, connection: Connection, text: str) -> None:
        status, body = connection.post_json("/invocations", {"inputs": [text]})
        if status != 200:
            raise RuntimeError(f"mlflow: HTTP {status} {body[:200]!r}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def newest_export(home: Path) -> tuple[Path, Path]:
    """The newest exported bundle and the task bundle it was exported from, as the Dagster catalogue records."""
    os.environ.setdefault("DAGSTER_HOME", str(home / "dagster_home"))
    os.environ["TLP_HOME"] = str(home)
    located = subprocess.run(
        [sys.executable, "-m", "resources.catalogue", "exported_model", "exported_model:task_model"],
        capture_output=True, text=True, check=False,
    )
    if located.returncode != 0:
        raise SystemExit(f"{located.stderr.strip()} (run the main job first: make demo)")
    found = json.loads(located.stdout)
    return Path(found["exported_model:task_model"]) / "bundle", Path(found["exported_model"]) / "bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("TLP_HOME", ".tlp"))
    parser.add_argument("--requests", type=int, default=400, help="requests per server, concurrency and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime / torch threads per batch worker")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="batching wait (0: take what is queued)")
    parser.add_argument("--batch-workers", type=int, default=2, help="batch worker threads of each server")
    parser.add_argument("--only", help="comma-separated scenarios: int8,fp32,torch,unbatched,mlflow")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    home = Path(args.home).resolve()
    task_bundle, exported = newest_export(home)
    verify_bundle(task_bundle, "task")
    verify_bundle(exported, "exported")
    schema = LabelSchema.from_json(json.loads((exported / "label_schema.json").read_text()))
    if not (exported / EVAL_SUITE_FILE).is_file():
        raise SystemExit(f"{exported} has no {EVAL_SUITE_FILE} (exported before gates kept it): materialise exported_model")
    eval_suite = read_split_jsonl(exported / EVAL_SUITE_FILE, schema)  # what the export's gates judged
    texts = list(eval_suite.texts)
    truth = [schema.labels[label] for label in eval_suite.labels]  # responses carry the raw label value

    variants = {
        "int8": VariantSpec("bench", exported, "int8"),
        "fp32": VariantSpec("bench", exported, "fp32"),
        "torch": VariantSpec("bench", exported, "torch", torch_bundle=task_bundle),
    }
    def platform(name: str, variant: VariantSpec, max_batch_size: int) -> Callable[[Path], BenchServer]:
        return lambda w: PlatformServer(
            name, variant, w, args.threads, max_batch_size, args.max_wait_ms, args.batch_workers
        )

    def one_at_a_time(name: str, variant: VariantSpec) -> Callable[[Path], BenchServer]:
        # serving one request at a time: a single worker, batch size 1, every core on that one request
        cores = args.threads * args.batch_workers
        return lambda w: PlatformServer(name, variant, w, cores, 1, 0.0, 1)

    chosen = set((args.only or "int8,fp32,torch,unbatched,mlflow").split(","))
    if args.skip_mlflow:
        chosen.discard("mlflow")
    scenarios: list[tuple[str, Callable[[Path], BenchServer]]] = [
        (f"this server, {name}", platform(name, variant, 16)) for name, variant in variants.items() if name in chosen
    ]
    if "unbatched" in chosen:
        scenarios.append(("this server, int8, one at a time", one_at_a_time("int8-single", variants["int8"])))
    if "mlflow" in chosen:
        scenarios.append(("mlflow models serve", lambda w: MlflowServer(task_bundle, w)))

    # Every server runs at once, idle but for the one under load; each round drives every server at every
    # concurrency, in an order rotated per round. A ratio is taken within a round (the machine is shared and its
    # speed drifts over minutes); the table shows medians over rounds and each ratio its median and range.
    rounds: list[dict[str, dict[int, LoadResult]]] = []
    accuracy: dict[str, float] = {}
    correct: dict[str, np.ndarray] = {}
    servers: dict[str, BenchServer] = {}
    workdir = Path(tempfile.mkdtemp(prefix="tlp-serving-bench-"))
    try:
        for label, start in scenarios:
            servers[label] = start(workdir)
            drive(servers[label].send, servers[label].port, texts, 4, 40)  # warm-up
        for index in range(args.rounds):
            order = list(servers)[index % len(servers):] + list(servers)[: index % len(servers)]
            results: dict[str, dict[int, LoadResult]] = {label: {} for label in servers}
            for c in CONCURRENCIES:
                for label in order:
                    server = servers[label]
                    results[label][c] = drive(server.send, server.port, texts, c, args.requests)
            rounds.append(results)
            print(f"round {index + 1}:", {label: {c: f"{r.throughput:.0f}/s p99 {r.p99_ms:.0f} ms" for c, r in by_c.items()}
                                           for label, by_c in results.items()}, flush=True)
        for label, server in servers.items():
            if isinstance(server, PlatformServer):
                right = np.array([p == t for p, t in zip(server.predict_labels(texts), truth, strict=True)])
                correct[label] = right
                accuracy[label] = float(right.mean())
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def median(label: str, c: int, field: str) -> float:
        return float(np.median([getattr(r[label][c], field) for r in rounds]))

    print(f"eval suite: {len(texts)} sentences; {args.requests} single-text requests per server, concurrency and "
          f"round; {args.rounds} rounds; {args.batch_workers} batch workers x {args.threads} inference threads, "
          f"max wait {args.max_wait_ms} ms; machine: {os.cpu_count()} cores, load generator on the same machine")
    print(f"{'server (median over rounds)':34} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for label in servers:
        for c in CONCURRENCIES:
            errors = sum(r[label][c].errors for r in rounds)
            print(f"{label:34} {c:>4} {median(label, c, 'throughput'):8.1f} {median(label, c, 'p50_ms'):8.1f} "
                  f"{median(label, c, 'p99_ms'):8.1f} {errors:>6}")
    ratios: dict[str, dict[str, float]] = {}

    def ratio(name: str, numerator: str, denominator: str, concurrency: int, target: float) -> None:
        if numerator in servers and denominator in servers:
            values = [r[numerator][concurrency].throughput / r[denominator][concurrency].throughput for r in rounds]
            value = float(np.median(values))
            ratios[name] = {"median": value, "min": min(values), "max": max(values)}
            print(f"{name}: {value:.2f}x median of {len(values)} rounds (range {min(values):.2f}-{max(values):.2f}; "
                  f"target >= {target}x: {'met' if value >= target else 'NOT met'})")

    ratio("int8 / torch eager, concurrency 8", "this server, int8", "this server, torch", 8, 2.0)
    ratio("int8 / mlflow models serve, concurrency 8", "this server, int8", "mlflow models serve", 8, 5.0)
    ratio("batched / one at a time int8, concurrency 32", "this server, int8", "this server, int8, one at a time", 32, 1.4)
    if "mlflow models serve" in servers and "this server, int8" in servers:
        ours, theirs = median("this server, int8", 8, "p99_ms"), median("mlflow models serve", 8, "p99_ms")
        print(f"p99 at concurrency 8 (median over rounds): int8 {ours:.1f} ms, mlflow {theirs:.1f} ms "
              f"({'no worse' if ours <= theirs else 'WORSE'})")
    reference = correct.get("this server, torch")
    for label, right in correct.items():
        if reference is None:
            print(f"accuracy {label}: {right.mean():.4f}")
            continue
        only, reference_only = int(np.sum(right & ~reference)), int(np.sum(reference & ~right))
        print(f"accuracy {label}: {right.mean():.4f} ({100 * (right.mean() - reference.mean()):+.2f} points against "
              f"PyTorch eager, target within 0.5; right where PyTorch was wrong {only}, wrong where it was right "
              f"{reference_only}, McNemar exact p {mcnemar_exact_p(only, reference_only):.3f})")
    if args.json:
        document: dict[str, object] = {
            "rounds": [{k: {str(c): vars(r) | {"throughput": r.throughput} for c, r in v.items()} for k, v in rnd.items()}
                       for rnd in rounds],
            "ratios": ratios, "accuracy": accuracy,
        }
        if "this server, int8" in servers:  # what `tlp report --serving-bench` prices a replica by
            document[REPLICA_THROUGHPUT_KEY] = {
                "requests_per_second": median("this server, int8", max(CONCURRENCIES), "throughput"),
                "server": "this server, INT8 ONNX, dynamic batching",
                "concurrency": max(CONCURRENCIES),
                "rounds": args.rounds,
                "cpu_cores": os.cpu_count(),
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": "load generator on the same machine",
            }
        Path(args.json).write_text(json.dumps(document, indent=2))

if __name__ == "__main__":
    main()
