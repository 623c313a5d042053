"""Start the server: ``python -m tl_platform.serving --deployment PATH`` or ``tlp serve --deployment PATH``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tl_platform.serving.config import LOG_URL_VARIABLE, ServingConfig


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServingConfig(deployment=Path("deployment.json"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--deployment", help="the deployment record (JSON) to serve and watch")
    source.add_argument(
        "--registry-model", metavar="NAME",
        help="serve what the registered model NAME's deployment record names, downloading its versions from the "
        "tracking server (--tracking-uri) into --model-cache, each verified against the record's digest",
    )
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="the MLflow tracking server, with --registry-model (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--model-cache", default=str(defaults.model_cache),
                        help="where versions downloaded from the registry are kept")
    parser.add_argument("--log-url", default=os.environ.get(LOG_URL_VARIABLE, defaults.log_url),
                        help=f"SQLAlchemy URL of the prediction log (default: ${LOG_URL_VARIABLE}, else {defaults.log_url}; "
                        "the variable keeps a password out of the command line)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=defaults.intra_op_threads, help="ONNX Runtime intra-op threads")
    parser.add_argument("--batch-workers", type=int, default=defaults.batch_workers, help="threads running batches")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms)
    parser.add_argument("--max-texts-per-request", type=int, default=defaults.max_texts_per_request)
    parser.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars)
    parser.add_argument("--on-overlong", choices=("reject", "truncate"), default=defaults.on_overlong)
    parser.add_argument("--reload-interval-s", type=float, default=defaults.reload_interval_s)
    parser.add_argument("--no-length-buckets", action="store_true", help="one bucket: batch texts of any length together")
    parser.add_argument(
        "--sqlite-synchronous", choices=("normal", "full"), default=defaults.sqlite_synchronous,
        help="normal: answered requests survive a killed server; full: also a power loss (fsync per commit)",
    )
    privacy = parser.add_argument_group(
        "prediction log privacy",
        "By default the log stores each request's text (as scored) for drift analysis, labelling and retraining, "
        "and removes it after --text-retention-days (a purge at start, then hourly); the row and its monitoring "
        "features stay. --no-capture-text never stores texts: features, labels and confidences are still logged.",
    )
    privacy.add_argument(
        "--no-capture-text", dest="capture_text", action="store_false",
        help="do not store request texts in the prediction log (the text column stays NULL)",
    )
    privacy.add_argument(
        "--text-retention-days", type=int, default=defaults.text_retention_days,
        help=f"days a logged text is kept before it is set to NULL, in [1, 3650] (default {defaults.text_retention_days})",
    )
    parser.add_argument(
        "--log-start-wait-s", type=float, default=defaults.log_start_wait_s,
        help="seconds start-up keeps retrying an unreachable prediction log (back-off 0.5 s to 8 s) before giving up",
    )
    parser.add_argument("--log-connect-timeout-s", type=float, default=defaults.log_connect_timeout_s,
                        help="longest wait to open a connection to the prediction log")
    parser.add_argument("--log-statement-timeout-s", type=float, default=defaults.log_statement_timeout_s,
                        help="longest one statement of the prediction log may run; a request past it is answered 503")
    load = parser.add_argument_group(
        "backpressure",
        "Under overload the server refuses what it cannot answer in time, with Retry-After, instead of queueing "
        "without bound: 429 past --max-in-flight or a full batching queue, 503 past the deadline or a full log queue.",
    )
    load.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight,
                      help="most predict requests worked on at once; one more gets 429 at once")
    load.add_argument("--max-queued-texts", type=int, default=defaults.max_queued_texts,
                      help="most texts waiting for a batch; a request that does not fit gets 429")
    load.add_argument("--max-pending-log-rows", type=int, default=defaults.max_pending_log_rows,
                      help="most rows waiting for the log's commit; past it a request gets 503")
    load.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s,
                      help="deadline for tokenising, queueing and inference of a request; past it 503, texts dropped")
    parser.add_argument(
        "--no-migrate", dest="migrate_log", action="store_false",
        help="do not migrate the prediction log's schema at start; refuse to start unless it is already at the head "
        "revision (for replicas when one process, or `python -m tl_platform.serving.log_admin migrate`, migrates)",
    )
    parser.add_argument(
        "--accept-event-time", action="store_true",
        help="let POST /predict and /feedback set the logged time with an X-Event-Time header (ISO 8601 with a time "
        "zone), for traffic simulators and replays of recorded traffic; without it such requests are refused (400)",
    )
    parser.add_argument(
        "--require-unit-id", action="store_true",
        help="while the deployment splits units between champion and challenger, refuse (422) a request without "
        "unit_id; without it such a request is answered by the champion and left out of the experiment",
    )


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    config = ServingConfig(
        deployment=Path(args.deployment) if args.deployment else None,
        registry_model=args.registry_model,
        tracking_uri=args.tracking_uri,
        model_cache=Path(args.model_cache),
        log_url=args.log_url,
        intra_op_threads=args.threads,
        batch_workers=args.batch_workers,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_texts_per_request=args.max_texts_per_request,
        max_text_chars=args.max_text_chars,
        on_overlong=args.on_overlong,
        reload_interval_s=args.reload_interval_s,
        sqlite_synchronous=args.sqlite_synchronous,
        capture_text=args.capture_text,
        text_retention_days=args.text_retention_days,
        migrate_log=args.migrate_log,
        accept_event_time=args.accept_event_time,
        require_unit_id=args.require_unit_id,
        log_start_wait_s=args.log_start_wait_s,
        log_connect_timeout_s=args.log_connect_timeout_s,
        log_statement_timeout_s=args.log_statement_timeout_s,
        max_in_flight=args.max_in_flight,
        max_queued_texts=args.max_queued_texts,
        max_pending_log_rows=args.max_pending_log_rows,
        request_timeout_s=args.request_timeout_s,
    )
    return dataclasses.replace(config, bucket_edges=()) if args.no_length_buckets else config


def serve(args: argparse.Namespace) -> int:
    """Validate the settings, load the deployment (refusing an unservable one), then run uvicorn until stopped."""
    import uvicorn

    from tl_platform.checkpoints.bundle import BundleError
    from tl_platform.serving.app import create_app
    from tl_platform.serving.deployment import DeploymentRecordError
    from tl_platform.serving.deployment_watcher import ModelLoadError
    from tl_platform.serving.log_availability import LogUnavailableError
    from tl_platform.serving.log_migrations import LogSchemaError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        app = create_app(config)
    except (ValueError, DeploymentRecordError, BundleError, LogSchemaError, ModelLoadError, LogUnavailableError) as err:
        print(f"tlp serve: {err}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_platform.serving", description=__doc__)
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))
