from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: list[str], env: dict[str, str], health_url: str, log_path: Path) -> subprocess.Popen:
    """Start a server process and wait until its health URL answers 200 (failing the test with its log if not)."""
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{command[0]} did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend and served artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow, "mlflow is installed with the project"
    uri = f"http://127.0.0.1:{port}"
    command = [
        mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    process = start_server(command, env, f"{uri}/health", root / "server.log")
    yield uri
    stop_server(process)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `prefect server start` on 127.0.0.1; yields the environment that points clients at it."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent))
    assert prefect, "prefect is installed with the project"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = start_server(command, env, f"http://127.0.0.1:{port}/api/health", root / "server.log")
    yield {key: env[key] for key in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    stop_server(process)


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-protocol server (moto's standalone server) on 127.0.0.1 with one empty bucket; yields its URL.

    Clients find it through AWS_ENDPOINT_URL, as botocore (and so s3fs, and every fsspec user) reads it.
    """
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "gradwatch-test",
        "AWS_SECRET_ACCESS_KEY": "gradwatch-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached by an earlier test would reach its server
    s3fs.S3FileSystem().mkdir("gradwatch-test")
    yield "s3://gradwatch-test"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
