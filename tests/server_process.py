"""A serving API as a real process on a free port, for tests that talk to it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_server(deployment: Path, log_url: str, port: int, tmp_path: Path, *flags: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tl_platform.serving", "--deployment", str(deployment), "--log-url", log_url,
               "--port", str(port), "--batch-workers", "2", "--max-wait-ms", "2", "--reload-interval-s", "0.1", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    stderr = (tmp_path / f"server-{port}.log").open("wb")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=stderr, stderr=stderr)


def wait_ready(server: subprocess.Popen[bytes], port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited with {server.returncode}: {(tmp_path / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError("server did not become ready in 60 s")


def start_server(deployment: Path, log_url: str, port: int, tmp_path: Path, *flags: str) -> subprocess.Popen[bytes]:
    return wait_ready(launch_server(deployment, log_url, port, tmp_path, *flags), port, tmp_path)
