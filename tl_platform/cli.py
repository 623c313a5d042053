"""`tlp`: run the main job, open the UIs, check data and bundles, list tracked runs, plan and report, serve.

Orchestration commands shell out to the ``dagster`` and ``mlflow`` executables, so the library itself never
imports Dagster. Local state lives under TLP_HOME (default ``.tlp`` in the working directory).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tl_platform.local_state import default_tracking_uri, tlp_home
from tl_platform.orchestration import (
    RunConfig,
    config_file,
    dagster_environment,
    ensure_instance_storage,
    executable,
    load_config_file,
    local_workspace,
)
from tl_platform.proposal_commands import cmd_plan, cmd_report
from tl_platform.registry_commands import cmd_models, cmd_promote


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Run config of the main job from command-line choices, merged over a YAML/JSON file when one is given."""
    config: RunConfig = {"ops": {}}
    if args.config:
        loaded = load_config_file(Path(args.config))
        config["ops"].update(loaded.get("ops", {}))

    def set_field(op: str, key: str, value: object) -> None:
        config["ops"].setdefault(op, {"config": {}}).setdefault("config", {})[key] = value

    if args.domain:
        set_field("labelled_data", "domain", args.domain)
    if args.foundation:
        set_field("foundation_model", "source", args.foundation)
    if args.skip_domain_adaptation:
        set_field("domain_adapted_model", "enabled", False)
    if args.method:
        set_field("task_model", "method", args.method)
    if args.epochs is not None:
        set_field("task_model", "epochs", args.epochs)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    if not args.stages_only:
        from tl_platform.story.command import cmd_story

        return cmd_story(args, run_config_from_args(args))
    env = dagster_environment()
    ensure_instance_storage(env)
    config_path = config_file(env, "run", run_config_from_args(args))
    command = [executable("dagster"), "job", "execute", "-m", "definitions", "-j", args.job, "-c", str(config_path)]
    print(f"tlp: {' '.join(command)}  (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode == 0:
        print(f"tlp: done. Browse runs with `tlp mlflow-ui` and the asset graph with `tlp ui` (state in {env['TLP_HOME']})")
    return completed.returncode


def cmd_ui(args: argparse.Namespace) -> int:
    env = dagster_environment()
    command = [executable("dagster"), "dev", "-w", str(local_workspace(env, Path.cwd())), "--port", str(args.port)]
    return subprocess.run(command, env=env, check=False).returncode


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    home = tlp_home()
    uri = default_tracking_uri(home)
    command = [executable("mlflow"), "ui", "--backend-store-uri", uri, "--port", str(args.port)]
    return subprocess.run(command, env=dagster_environment(), check=False).returncode


def cmd_data_check(args: argparse.Namespace) -> int:
    from tl_platform.data import DatasetSource, DataValidationError, LabelSchema, load_labelled_text

    schema = LabelSchema(labels=tuple(args.labels.split(",")))
    try:
        source = DatasetSource(
            path=args.path, schema=schema, text_column=args.text_column, label_column=args.label_column, format=args.format
        )
        dataset = load_labelled_text(source)
    except (DataValidationError, ValueError) as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    dup = dataset.duplicates
    print(f"{dataset.source}: {dataset.rows_read} rows read, {len(dataset)} kept")
    print(f"  exact duplicates dropped: {dup.exact_duplicates}")
    print(f"  conflicting texts dropped: {dup.conflicting_texts} ({dup.conflicting_rows} rows)")
    print(f"  label counts: {dataset.label_counts()}")
    print(f"  content hash: {dataset.content_hash()}")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from tl_platform.checkpoints import BundleError, verify_bundle

    try:
        manifest = verify_bundle(Path(args.path), args.stage)
    except BundleError as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    print(f"{manifest.path}: a valid {manifest.stage} bundle of {len(manifest.files)} files")
    print(f"  bundle sha256: {manifest.bundle_sha256}")
    print(f"  git sha: {manifest.provenance.get('git_sha')}  seeds: {manifest.provenance.get('seeds')}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from tl_platform.tracking.mlflow_tracker import MlflowSettings, search_runs

    uri = default_tracking_uri(tlp_home())
    runs = search_runs(MlflowSettings(uri, args.experiment))
    if not runs:
        print(f"no runs in experiment {args.experiment!r} at {uri}")
        return 0
    for run in runs:
        metrics: dict[str, float] = run["metrics"]  # type: ignore[assignment]
        shown = {k: round(v, 4) for k, v in metrics.items() if k in args.metrics}
        print(f"{run['run_id']}  {run['status']:<9} {run['name']:<40} {shown}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the deployment record's champion (and challenger) until stopped; see tl_platform.serving."""
    from tl_platform.serving.server import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlp", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the closed loop on simulated days: plan, models, serving, monitoring, retrain, "
                                     "A/B, costs (--stages-only: the model stages alone)")
    run.add_argument("--stages-only", action="store_true", help="only the main job: labelled data to deployment")
    run.add_argument("--job", default="main_job", help="with --stages-only: the Dagster job to execute")
    run.add_argument("--seed", type=int, default=7, help="the story's seed (traffic, training, routing)")
    run.add_argument("--quick", action="store_true", help="the shortened story the end-to-end test runs (7 days)")
    run.add_argument("--restart", action="store_true", help="start the story over instead of resuming a stopped one")
    run.add_argument("--owner", default="ML platform on-call", help="who owns the monitoring loop (the ROI curve)")
    run.add_argument("--domain", choices=("amazon", "yelp", "imdb"), help="bundled domain (default amazon)")
    run.add_argument("--foundation", help="package:<module>, a model directory or a hub id")
    run.add_argument("--method", choices=("lora", "full"), help="fine-tuning method (default lora)")
    run.add_argument("--epochs", type=int, help="maximum fine-tuning epochs")
    run.add_argument("--skip-domain-adaptation", action="store_true", help="pass the foundation model through")
    run.add_argument("--config", help="a Dagster run config file (YAML or JSON); flags override it")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="the Dagster web UI (dagster dev) on this project")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    mlflow_ui = sub.add_parser("mlflow-ui", help="the MLflow UI on the local tracking store")
    mlflow_ui.add_argument("--port", type=int, default=5000)
    mlflow_ui.set_defaults(func=cmd_mlflow_ui)

    data = sub.add_parser("data", help="data commands").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a labelled dataset and report duplicates and conflicts")
    check.add_argument("path")
    check.add_argument("--labels", required=True, help="comma-separated allowed label values")
    check.add_argument("--text-column", default="text")
    check.add_argument("--label-column", default="label")
    check.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"))
    check.set_defaults(func=cmd_data_check)

    bundle = sub.add_parser("bundle", help="bundle commands").add_subparsers(dest="bundle_command", required=True)
    verify = bundle.add_parser("verify", help="check a reproducibility bundle against its manifest")
    verify.add_argument("path")
    verify.add_argument("--stage", choices=("foundation", "domain_adapted", "task"))
    verify.set_defaults(func=cmd_bundle_verify)

    runs = sub.add_parser("runs", help="list tracked MLflow runs, newest first")
    runs.add_argument("--experiment", default="tl_platform")
    runs.add_argument("--metrics", nargs="*", default=["test_accuracy", "perplexity_after", "probe_test_accuracy"])
    runs.set_defaults(func=cmd_runs)

    plan = sub.add_parser("plan", help="the transfer plan: which recipe, why, and the run config that carries it out")
    plan.add_argument("--domain", default="amazon", choices=("amazon", "yelp", "imdb"), help="bundled domain")
    plan.add_argument("--data", help="your labelled data (csv, tsv, jsonl, parquet) instead of a bundled domain")
    plan.add_argument("--labels", help="with --data: comma-separated allowed label values")
    plan.add_argument("--text-column", default="text")
    plan.add_argument("--label-column", default="label")
    plan.add_argument("--format", choices=("csv", "tsv", "jsonl", "parquet"))
    plan.add_argument("--split-seed", type=int, default=42, help="the labelled_data split seed")
    plan.add_argument("--foundation", help="package:<module>, a model directory or a hub id")
    plan.add_argument("--latency-sla-ms", type=float, default=500.0)
    plan.add_argument("--daily-requests", type=float, default=10_000.0)
    plan.add_argument("--tasks", type=int, default=1, help="tasks or tenants sharing the backbone")
    plan.add_argument("--api-latency-ms", type=float, default=1500.0, help="assumed p95 latency of a frontier API")
    plan.add_argument("--far-threshold", type=float, default=1.4, help="relative domain distance counted as far")
    plan.add_argument("--max-texts", type=int, default=300, help="texts embedded per domain")
    plan.add_argument("--max-length", type=int, default=64, help="tokens per text for the embeddings")
    plan.add_argument("--length-percentile", type=float, default=95.0,
                      help="max_length holds this percentile of the texts' token lengths whole")
    plan.add_argument("--min-max-length", type=int, default=64, help="the shortest max_length the plan chooses")
    plan.add_argument("--write", help="write the main job's run config here (.json or .yaml) for tlp run --config")
    plan.add_argument("--compare", action="store_true",
                      help="then train the recommended recipe and the runner-up on the same splits, side by side")
    plan.add_argument("--compare-epochs", type=int, default=3, help="with --compare: maximum epochs of each")
    plan.add_argument("--compare-latency-requests", type=int, default=100,
                      help="with --compare: single-text predictions timed per candidate")
    plan.add_argument("--compare-seed", type=int, default=42, help="with --compare: the training seed of both")
    plan.add_argument("--experiment", default="tl_platform", help="with --compare: the MLflow experiment")
    plan.set_defaults(func=cmd_plan)

    report = sub.add_parser("report", help="the proposal: plan, cost comparison and ROI curve as one HTML page")
    report.add_argument("--out", default="proposal.html", help="the HTML file to write")
    report.add_argument("--materialise", action="store_true", help="materialise the three assets first (dagster)")
    report.add_argument("--owner", help="with --materialise: who owns the monitoring loop (required by roi_curve)")
    report.add_argument("--config", help="with --materialise: a run config file for the three assets")
    report.add_argument(
        "--serving-bench", help="with --materialise: price a replica by this bench/serving_throughput.py --json file"
    )
    report.set_defaults(func=cmd_report)

    promote_parser = sub.add_parser("promote", help="move the champion or challenger alias, with a recorded reason")
    promote_parser.add_argument("version", help="the registered version to promote")
    promote_parser.add_argument("--alias", required=True, choices=("champion", "challenger"))
    promote_parser.add_argument("--reason", required=True, help="why (recorded as a tag on the version)")
    promote_parser.add_argument("--actor", help="who promotes (default: $USER via tlp promote)")
    promote_parser.add_argument("--model", default="tlp-classifier")
    promote_parser.add_argument("--experiment", default="tl_platform")
    promote_parser.set_defaults(func=cmd_promote)

    models = sub.add_parser("models", help="registered versions of the serving model with aliases and status")
    models.add_argument("--model", default="tlp-classifier")
    models.add_argument("--experiment", default="tl_platform")
    models.set_defaults(func=cmd_models)

    serve = sub.add_parser("serve", help="the prediction API (FastAPI, ONNX Runtime) on a deployment record")
    from tl_platform.serving.server import add_serve_arguments

    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
