"""`tlp`: run the main job, open the UIs, check data and bundles, list tracked runs, plan and report, serve.

Orchestration commands shell out to the ``dagster`` and ``mlflow`` executables, so the library itself never
imports Dagster. Local state lives under TLP_HOME (default ``.tlp`` in the working directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_platform.local_state import default_tracking_uri, tlp_home

# Dagster's defaults (SQLite under DAGSTER_HOME) plus pool limits: the training stages share one machine's
# cores, so two runs (a retrain beside a backfill, say) train one at a time; registry moves are serialised too.
LOCAL_INSTANCE_YAML = """\
concurrency:
  pools:
    default_limit: 1
"""


def _environment() -> dict[str, str]:
    home = tlp_home()
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_file = dagster_home / "dagster.yaml"
    if not instance_file.is_file() or not instance_file.read_text().strip():  # never overwrite a user's settings
        instance_file.write_text(LOCAL_INSTANCE_YAML)
    env = dict(os.environ)
    env.update(
        {
            "TLP_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def _ensure_instance_storage(env: dict[str, str]) -> None:
    """Create the local Dagster instance's storage once, before a run starts.

    Two `tlp run`s started together on a fresh TLP_HOME would each create it, and Dagster's SQLite migrations
    then collide ("more than one head"); a file lock lets the first create it and the second find it.
    """
    import fcntl

    home = Path(env["DAGSTER_HOME"])
    with open(home / ".storage.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "history" / "runs.db").exists():
            subprocess.run([_executable("dagster"), "instance", "migrate"], env=env, check=True, capture_output=True)


def _config_file(env: dict[str, str], kind: str, config: RunConfig) -> Path:
    """This invocation's own run config file: two commands at once never read each other's."""
    import tempfile

    directory = Path(env["TLP_HOME"]) / "run_configs"
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".json", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
    return Path(name)


def _executable(name: str) -> str:
    # Prefer the one beside this interpreter (the project's virtual environment), then PATH.
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"tlp: {name!r} is not installed in this environment (pip install -e .)")
    return found


RunConfig = dict[str, dict[str, dict[str, dict[str, object]]]]  # {"ops": {op: {"config": {field: value}}}}


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Run config of the main job from command-line choices, merged over a YAML/JSON file when one is given."""
    config: RunConfig = {"ops": {}}
    if args.config:
        loaded = _load_config_file(Path(args.config))
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


def _load_config_file(path: Path) -> RunConfig:
    if not path.is_file():
        raise SystemExit(f"tlp: config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("ops", {}), dict):
        raise SystemExit(f"tlp: {path} must hold a mapping with an 'ops' mapping (Dagster run config)")
    return loaded


def cmd_run(args: argparse.Namespace) -> int:
    env = _environment()
    _ensure_instance_storage(env)
    config_path = _config_file(env, "run", run_config_from_args(args))
    command = [_executable("dagster"), "job", "execute", "-m", "definitions", "-j", args.job, "-c", str(config_path)]
    print(f"tlp: {' '.join(command)}  (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode == 0:
        print(f"tlp: done. Browse runs with `tlp mlflow-ui` and the asset graph with `tlp ui` (state in {env['TLP_HOME']})")
    return completed.returncode


def cmd_ui(args: argparse.Namespace) -> int:
    command = [_executable("dagster"), "dev", "-m", "definitions", "--port", str(args.port)]
    return subprocess.run(command, env=_environment(), check=False).returncode


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    home = tlp_home()
    uri = default_tracking_uri(home)
    command = [_executable("mlflow"), "ui", "--backend-store-uri", uri, "--port", str(args.port)]
    return subprocess.run(command, env=_environment(), check=False).returncode


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


def cmd_plan(args: argparse.Namespace) -> int:
    """Measure the data, walk the decision tree, print the plan; write the main job's run config with --write."""
    from tl_platform.data import DatasetSource, DataValidationError, LabelSchema, SplitFractions, stratified_split
    from tl_platform.data.bundled import bundled_source
    from tl_platform.data.loading import load_labelled_text
    from tl_platform.economics.decision import PlanSettings, plan_transfer
    from tl_platform.economics.documents import plan_document
    from tl_platform.economics.measurements import bundled_reference_texts, encoder_embedder
    from tl_platform.economics.render import to_markdown
    from tl_platform.models.foundation import (
        DEFAULT_FOUNDATION_SOURCE,
        FoundationSource,
        FoundationSourceError,
        load_encoder,
        load_tokenizer,
        resolve_source,
    )

    try:
        if args.data:
            if not args.labels:
                raise ValueError("--labels is required with --data (the allowed label values, comma-separated)")
            source = DatasetSource(
                path=args.data, schema=LabelSchema(labels=tuple(args.labels.split(","))),
                text_column=args.text_column, label_column=args.label_column, format=args.format,
            )
        else:
            source = bundled_source(args.domain)
        dataset = load_labelled_text(source)
        # the labelled_data asset's default split: domain adaptation trains on the texts of its train split
        train = stratified_split(dataset, SplitFractions(), args.split_seed).train
        settings = PlanSettings(
            latency_sla_ms=args.latency_sla_ms, daily_requests=args.daily_requests,
            tasks_sharing_backbone=args.tasks, api_latency_ms=args.api_latency_ms,
            far_threshold=args.far_threshold, max_texts_per_domain=args.max_texts,
        )
        spec = FoundationSource(args.foundation or DEFAULT_FOUNDATION_SOURCE)
        resolved = resolve_source(spec)
        encoder = load_encoder(resolved)
        tokenizer = load_tokenizer(resolved)
        parameters = sum(p.numel() for p in encoder.parameters())
        plan = plan_transfer(
            texts=dataset.texts, labels=dataset.labels, class_names=dataset.schema.names,
            unlabelled_texts=len(train), references=bundled_reference_texts(),
            embed=encoder_embedder(encoder, tokenizer, args.max_length),
            pretrained_model=f"{spec.source} ({encoder.config.model_type}, {parameters:,} parameters)",
            settings=settings,
        )
    except (DataValidationError, FoundationSourceError, ValueError) as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    payload = plan.to_json()
    if payload["run_config"] is not None:  # printed as written: the recipe, the data and the foundation model
        payload["run_config"] = plan_run_config(args, payload["run_config"], spec.source)
    print(to_markdown(plan_document(payload)))
    if args.write:
        if payload["run_config"] is None:
            print(f"tlp: no run config to write: the main job runs neither {plan.recommended.label} nor "
                  f"{plan.runner_up.label}", file=sys.stderr)
            return 1
        _write_run_config(Path(args.write), payload["run_config"])
        print(f"tlp: wrote {args.write}; run it with `tlp run --config {args.write}`")
    return 0


def plan_run_config(args: argparse.Namespace, recipe_config: dict[str, Any], foundation_source: str) -> dict[str, Any]:
    """The main job's run config for a plan: the recipe's choices plus the data and foundation it measured."""
    if args.data:
        data: dict[str, object] = {
            "path": str(Path(args.data).resolve()),  # the file stays found from any working directory
            "text_column": args.text_column,
            "label_column": args.label_column,
            "labels": args.labels.split(","),
            "split_seed": args.split_seed,
        }
        if args.format:
            data["format"] = args.format
    else:
        data = {"domain": args.domain, "split_seed": args.split_seed}
    source = foundation_source
    if not source.startswith("package:") and Path(source).exists():
        source = str(Path(source).resolve())
    ops = {
        "labelled_data": {"config": data},
        "foundation_model": {"config": {"source": source}},
        **recipe_config["ops"],
    }
    return {"ops": ops}


def _write_run_config(path: Path, config: dict[str, object]) -> None:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        path.write_text(json.dumps(config, indent=2))


PROPOSAL_SELECTION = "transfer_plan,cost_report,roi_curve"


def report_run_config(args: argparse.Namespace) -> RunConfig:
    """Run config of the three proposal assets: a file's, with the monitoring loop's owner from --owner."""
    config: RunConfig = {"ops": {}}
    if args.config:
        config["ops"].update(_load_config_file(Path(args.config)).get("ops", {}))
    if args.owner:
        config["ops"].setdefault("roi_curve", {"config": {}}).setdefault("config", {})["monitoring_owner"] = args.owner
    if args.serving_bench:
        from tl_platform.economics.serving import throughput_from_bench

        path = Path(args.serving_bench)
        if not path.is_file():
            raise SystemExit(f"tlp: serving bench file {path} does not exist")
        try:
            rate, source = throughput_from_bench(json.loads(path.read_text(encoding="utf-8")), str(path))
        except (ValueError, json.JSONDecodeError) as err:
            raise SystemExit(f"tlp: {err}") from err
        cost = config["ops"].setdefault("cost_report", {"config": {}}).setdefault("config", {})
        cost.update({"serving_throughput_requests_per_second": rate, "serving_throughput_source": source})
    return config


def cmd_report(args: argparse.Namespace) -> int:
    """Render the published plan, cost report and ROI curve to one HTML page; --materialise makes them first."""
    from tl_platform.economics.report import (
        PROPOSAL_CATALOGUE_SPECS,
        ProposalIncompleteError,
        load_proposal,
        render_proposal_html,
    )

    if args.serving_bench and not args.materialise:
        raise SystemExit("tlp: --serving-bench feeds the cost report when it is materialised: add --materialise")
    if args.materialise:
        if not args.owner and not args.config:
            raise SystemExit("tlp: --materialise needs --owner NAME (who owns the monitoring loop) or a --config file")
        env = _environment()
        _ensure_instance_storage(env)
        config_path = _config_file(env, "report", report_run_config(args))
        command = [
            _executable("dagster"), "asset", "materialize", "-m", "definitions",
            "--select", PROPOSAL_SELECTION, "-c", str(config_path),
        ]
        print(f"tlp: {' '.join(command)}  (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0:
            return completed.returncode
    try:
        proposal = load_proposal(*_catalogue_dirs(PROPOSAL_CATALOGUE_SPECS))
    except ProposalIncompleteError as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_proposal_html(proposal), encoding="utf-8")
    print(f"tlp: wrote {out}")
    return 0


def _catalogue_dirs(specs: Sequence[str]) -> list[Path]:
    """Local directories of stage outputs as the Dagster catalogue records them (``resources.catalogue``)."""
    from tl_platform.economics.report import MATERIALISE_HINT, ProposalIncompleteError

    command = [sys.executable, "-m", "resources.catalogue", *specs]
    completed = subprocess.run(command, env=_environment(), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        message = completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "no output"
        raise ProposalIncompleteError(f"{message.removeprefix('catalogue: ')}; {MATERIALISE_HINT}")
    located = json.loads(completed.stdout)
    return [Path(located[spec]) for spec in specs]


def cmd_promote(args: argparse.Namespace) -> int:
    """Move the champion or challenger alias by hand, with the reason recorded on the version."""
    from tl_platform.experiments.promotion import PromotionConflictError, PromotionError, promote
    from tl_platform.tracking.mlflow_tracker import MlflowRegistry, MlflowSettings

    settings = MlflowSettings(default_tracking_uri(tlp_home()), args.experiment)
    actor = args.actor or f"{os.environ.get('USER', 'someone')} via tlp promote"
    try:
        done = promote(MlflowRegistry(settings), args.model, args.version, args.alias, args.reason, actor)
    except (PromotionError, PromotionConflictError) as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    if not done.changed:
        print(f"{done.model}: {done.alias} already names v{done.version}; nothing changed")
    else:
        print(f"{done.model}: {done.alias} v{done.previous or 'none'} -> v{done.version} ({done.reason})")
        print("  re-materialise `deployment` (tlp ui, or dagster asset materialize --select deployment) to serve it")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The registered versions of the serving model, their aliases and status, newest first."""
    from tl_platform.tracking.mlflow_tracker import MlflowSettings, registered_versions_with_aliases

    settings = MlflowSettings(default_tracking_uri(tlp_home()), args.experiment)
    versions = registered_versions_with_aliases(settings, args.model)
    if not versions:
        print(f"{args.model}: no registered versions at {settings.tracking_uri}")
        return 0
    for version, aliases, tags in versions:
        reason = next((tags[f"tlp.{a}.reason"] for a in aliases if f"tlp.{a}.reason" in tags), "")
        shown = ",".join(aliases) or "-"
        print(f"v{version:<5} {shown:<20} {tags.get('tlp.status', '-'):<18} {reason}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the deployment record's champion (and challenger) until stopped; see tl_platform.serving."""
    from tl_platform.serving.server import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlp", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialise the main job (labelled data to task model)")
    run.add_argument("--job", default="main_job")
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
    plan.add_argument("--write", help="write the main job's run config here (.json or .yaml) for tlp run --config")
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
