"""`tlp plan` and `tlp report`: the transfer plan from measured data, and the proposal page from the catalogue."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_platform.orchestration import (
    RunConfig,
    config_file,
    dagster_environment,
    ensure_instance_storage,
    executable,
    load_config_file,
)


def cmd_plan(args: argparse.Namespace) -> int:
    """Measure the data, walk the decision tree, print the plan; write the main job's run config with --write;
    with --compare, train the recommended recipe and the runner-up side by side (``comparison_command``).

    The plan chooses max_length from the texts' token lengths (--length-percentile, --min-max-length) and the
    strategy for longer texts, and the run config carries both to domain adaptation and fine-tuning."""
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
    from tl_platform.training.long_text import count_tokens, model_window

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
        splits = stratified_split(dataset, SplitFractions(), args.split_seed)
        train = splits.train
        settings = PlanSettings(
            latency_sla_ms=args.latency_sla_ms, daily_requests=args.daily_requests,
            tasks_sharing_backbone=args.tasks, api_latency_ms=args.api_latency_ms,
            far_threshold=args.far_threshold, max_texts_per_domain=args.max_texts,
            length_percentile=args.length_percentile, min_max_length=args.min_max_length,
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
            count_tokens=lambda texts: count_tokens(tokenizer, texts),
            window=model_window(tokenizer, encoder.config),
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
        write_run_config(Path(args.write), payload["run_config"])
        print(f"tlp: wrote {args.write}; run it with `tlp run --config {args.write}`")
    if args.compare:
        from tl_platform.comparison_command import run_comparison

        return run_comparison(args, plan, splits, Path(resolved), tokenizer)
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


def write_run_config(path: Path, config: dict[str, object]) -> None:
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
        config["ops"].update(load_config_file(Path(args.config)).get("ops", {}))
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
        env = dagster_environment()
        ensure_instance_storage(env)
        config_path = config_file(env, "report", report_run_config(args))
        command = [
            executable("dagster"), "asset", "materialize", "-m", "definitions",
            "--select", PROPOSAL_SELECTION, "-c", str(config_path),
        ]
        print(f"tlp: {' '.join(command)}  (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0:
            return completed.returncode
    try:
        proposal = load_proposal(*catalogue_dirs(PROPOSAL_CATALOGUE_SPECS))
    except ProposalIncompleteError as err:
        print(f"tlp: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_proposal_html(proposal), encoding="utf-8")
    print(f"tlp: wrote {out}")
    return 0


def catalogue_dirs(specs: Sequence[str]) -> list[Path]:
    """Local directories of stage outputs as the Dagster catalogue records them (``resources.catalogue``)."""
    from tl_platform.economics.report import MATERIALISE_HINT, ProposalIncompleteError

    command = [sys.executable, "-m", "resources.catalogue", *specs]
    completed = subprocess.run(command, env=dagster_environment(), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        message = completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "no output"
        raise ProposalIncompleteError(f"{message.removeprefix('catalogue: ')}; {MATERIALISE_HINT}")
    located = json.loads(completed.stdout)
    return [Path(located[spec]) for spec in specs]
