"""The production topology as native processes: what docker-compose.yml runs, started here without an engine.

Postgres is the machine's own server (127.0.0.1:5432, user postgres); each topology gets throwaway databases
(Dagster's storage, MLflow's store, the prediction log) dropped afterwards. Each process runs the command its
compose service runs, read from docker-compose.yml, with this machine's addresses and paths put in for the
container's (``compose_command``), from the repository root, with the files compose uses:
``deploy/dagster.yaml`` (linked into DAGSTER_HOME, not copied) and ``deploy/workspace.yaml``, configured only
by environment variables, as the containers are. MinIO is not run: MLflow keeps artifacts in a local folder.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import yaml
from psycopg import sql

from tests.server_process import ROOT, free_port

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
BIN = Path(sys.executable).parent
COMPOSE_SERVICES: dict[str, dict[str, object]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
IMAGE_PATHS = {"/opt/dagster/home/workspace.yaml": str(ROOT / "deploy" / "workspace.yaml"), "/opt/tl_platform": str(ROOT)}


def compose_command(service: str, port: int | None = None, paths: dict[str, str] | None = None) -> list[str]:
    """The command of a compose service as this machine runs it: loopback for 0.0.0.0, ``port`` for its
    ``--port``, the repository's files and ``paths`` for the image's paths, a variable's compose default for
    the variable, and this environment's executables."""
    argv = [str(arg) for arg in COMPOSE_SERVICES[service]["command"]]  # type: ignore[attr-defined]
    local = {**IMAGE_PATHS, **(paths or {})}
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "0.0.0.0":
            arg = "127.0.0.1"
        elif index > 0 and argv[index - 1] == "--port" and port is not None:
            arg = str(port)
        elif arg in local:
            arg = local[arg]
        arg = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)  # ${VAR:-default}: the default
        out.append(arg)
    out[0] = sys.executable if out[0] == "python" else str(BIN / out[0])
    return out


def postgres_reason() -> str | None:
    try:
        with psycopg.connect(ADMIN_DSN):
            return None
    except psycopg.OperationalError as err:
        return f"Postgres at 127.0.0.1:5432 (user postgres, database test) is unreachable: {str(err).splitlines()[0]}"


def wait_until(what: str, ready: Callable[[], bool], timeout_s: float, log: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready in {timeout_s:.0f} s\n{log()[-4000:]}")


@dataclass
class Topology:
    root: Path
    prefix: str = field(default_factory=lambda: f"tlp_topo_{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in ("mlflow", "grpc", "webserver")})
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def database(self, role: str) -> str:
        return f"{self.prefix}_{role}"

    def url(self, role: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database(role)}"

    def create_databases(self) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            for role in ("dagster", "mlflow", "predictions"):
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database(role))))

    def drop_databases(self) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            for role in ("dagster", "mlflow", "predictions"):
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database(role)))
                )

    def query(self, role: str, statement: str) -> list[tuple[object, ...]]:
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={self.database(role)}") as connection:
            return list(connection.execute(statement).fetchall())  # type: ignore[arg-type]

    @property
    def env(self) -> dict[str, str]:
        """The variables compose gives its containers, with this machine's addresses."""
        return {
            **os.environ,
            "TLP_ENV": "production",
            "DAGSTER_HOME": str(self.root / "dagster_home"),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "trust-auth-ignores-it",
            "DAGSTER_PG_DB": self.database("dagster"),
            "DAGSTER_GRPC_HOST": "127.0.0.1",
            "DAGSTER_GRPC_PORT": str(self.ports["grpc"]),
            "MLFLOW_BACKEND_STORE_URI": self.url("mlflow"),
            "MLFLOW_ARTIFACTS_DESTINATION": (self.root / "mlflow-artifacts").as_uri(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as compose: no GenAI job workers (7 processes)
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports['mlflow']}",
            "TLP_MLFLOW_UI": f"http://127.0.0.1:{self.ports['mlflow']}",
            "TLP_ARTIFACT_ROOT": str(self.root / "stages"),
            "TLP_CACHE_DIR": str(self.root / "stage-cache"),
            "TLP_DEPLOYMENT_RECORD": str(self.root / "stages" / "deployment.json"),
            "TLP_PREDICTION_LOG_URL": self.url("predictions"),
            "TLP_TRIGGER_INTERVAL_S": "5",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def prepare(self) -> None:
        home = self.root / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").symlink_to(ROOT / "deploy" / "dagster.yaml")  # the production file itself
        (self.root / "logs").mkdir(exist_ok=True)

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        output = (self.root / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(command, cwd=ROOT, env=env or self.env, stdout=output, stderr=output,
                                   start_new_session=True)  # its own group: stopping it stops its children
        self.processes[name] = process
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    # the services, in the order compose starts them

    def start_mlflow(self) -> None:
        self.start("mlflow", compose_command("mlflow", self.ports["mlflow"]))
        wait_until("mlflow server", lambda: httpx.get(f"{self.env['MLFLOW_TRACKING_URI']}/health").status_code == 200,
                   180, lambda: self.log("mlflow"))

    def start_code_server(self) -> None:
        self.start("grpc", compose_command("user-code", self.ports["grpc"]))

        def serving() -> bool:  # the webserver loads the location once at start: the server must answer first
            with socket.create_connection(("127.0.0.1", self.ports["grpc"]), timeout=1):
                return True

        wait_until("the user-code gRPC server", serving, 240, lambda: self.log("grpc"))

    def start_webserver(self) -> None:
        self.start("webserver", compose_command("dagster-webserver", self.ports["webserver"]))
        wait_until("the webserver with the tl_platform location loaded", self.location_loaded, 240,
                   lambda: self.log("webserver") + self.log("grpc"))

    def start_daemon(self) -> None:
        self.start("daemon", compose_command("dagster-daemon"))
        wait_until("the daemon's run queue and sensors", self.daemons_healthy, 180, lambda: self.log("daemon"))

    @property
    def graphql_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webserver']}/graphql"

    def graphql(self, query: str, variables: dict[str, object] | None = None) -> dict[str, object]:
        response = httpx.post(self.graphql_url, json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]  # type: ignore[no-any-return]

    def location_loaded(self) -> bool:
        data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name "
                            "locationOrLoadError { __typename } } } } }")
        entries = data["workspaceOrError"]["locationEntries"]  # type: ignore[index]
        return any(e["name"] == "tl_platform" and e["locationOrLoadError"]
                   and e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries)

    def daemons_healthy(self) -> bool:
        data = self.graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }")
        statuses = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}  # type: ignore[index]
        return bool(statuses.get("SENSOR") and statuses.get("QUEUED_RUN_COORDINATOR"))
