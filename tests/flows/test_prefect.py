"""The monitor as a scheduled Prefect deployment on a real Prefect server, run by a real process worker."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.calibrate import calibrate_reference
from flows.registry import ThresholdRegistry
from pipelines.store import OutputStore
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig
from tests.flows.test_monitor import TINY, _noise

REPO = Path(__file__).resolve().parents[2]


def test_deployment_runs_on_a_worker_and_writes_outputs(tmp_path: Path, prefect_server, monkeypatch) -> None:
    for key, value in prefect_server.items():
        monkeypatch.setenv(key, value)
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("GRADWATCH_MLFLOW_URI", mlflow_uri)
    registry = ThresholdRegistry(mlflow_uri)
    last_hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    for index in range(100):
        _noise(tmp_path / "reference" / f"{index}.png", 1000 + index, last_hour - dt.timedelta(days=2))
    config = CalibrationConfig(min_window=20, check_windows=20, check_window_sizes=(20,))
    version, _ = calibrate_reference(
        str(tmp_path / "reference"), registry=registry, scoring=ScoringSettings(model=TINY), config=config
    )
    registry.approve(version.name, version.version, by="test")
    for index in range(25):
        _noise(tmp_path / "feed" / f"{index}.png", index, last_hour + dt.timedelta(minutes=index))

    from prefect.deployments import run_deployment

    from flows.prefect_flows import deploy

    out = tmp_path / "out"
    # until: so an hour turning during the test does not add an empty window.
    until = (last_hour + dt.timedelta(hours=1)).isoformat()
    parameters = {"source": str(tmp_path / "feed"), "out": str(out), "scoring": {"model": TINY}, "until": until}
    deployment_id = deploy(name="feed", parameters=parameters, work_pool="gradwatch-test")
    assert _schedules(deployment_id) == ["5 * * * *"]
    assert _pool_type("gradwatch-test") == "process"
    flow_run = run_deployment("gradwatch-monitor/feed", timeout=0)

    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent))
    worker_env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", "gradwatch-test", "--type", "process", "--run-once"],
        cwd=REPO, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    state = _wait_for_final_state(flow_run.id, timeout_s=300)
    worker.kill()
    output = worker.communicate()[0]
    assert state.is_completed(), f"{state}\n{output[-3000:]}"

    decisions = OutputStore(str(out)).read_table("decisions").to_pylist()
    assert [(row["window_start"], row["status"]) for row in decisions] == [(last_hour, "ok")]
    assert OutputStore(str(out)).read_table("scores").num_rows == 25


def _pool_type(name: str) -> str:
    import json
    import urllib.request

    # Straight to the server's REST API, so no client-side setting can point this check elsewhere.
    url = f"{os.environ['PREFECT_API_URL']}/work_pools/{name}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["type"]


def _schedules(deployment_id: str) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [schedule.schedule.cron for schedule in client.read_deployment(deployment_id).schedules]


def _wait_for_final_state(flow_run_id, timeout_s: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            if time.monotonic() > deadline:
                pytest.fail(f"flow run still {state} after {timeout_s} s")
            time.sleep(2)


def test_serve_registers_the_schedule_with_the_server(tmp_path: Path, prefect_server, monkeypatch) -> None:
    for key, value in prefect_server.items():
        monkeypatch.setenv(key, value)
    from prefect.client.orchestration import get_client

    gradwatch = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    env = {**os.environ, **prefect_server, "PYTHONPATH": str(REPO)}
    command = [
        gradwatch,
        "serve",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        "--name",
        "served",
        "--cron",
        "7 * * * *",
    ]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while True:
                try:
                    deployment = client.read_deployment_by_name("gradwatch-monitor/served")
                    break
                except Exception:
                    if time.monotonic() > deadline or server.poll() is not None:
                        pytest.fail("gradwatch serve did not register its deployment")
                    time.sleep(1)
        assert [schedule.schedule.cron for schedule in deployment.schedules] == ["7 * * * *"]
        assert deployment.parameters["source"] == str(tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_target_can_be_a_prefect_secret_block(prefect_server, monkeypatch) -> None:
    for key, value in prefect_server.items():
        monkeypatch.setenv(key, value)
    from prefect.blocks.system import Secret

    from flows.alerts import AlertConfigError, targets_from

    slack = "https://hooks.slack.com/services/T000/B000/block-held-path"
    Secret(value=slack).save("oncall-slack", overwrite=True)
    [target] = targets_from([], ["secret:oncall-slack"])
    assert target.url == slack
    with pytest.raises(AlertConfigError, match="cannot load the Prefect Secret block 'no-such-block'"):
        targets_from([], ["secret:no-such-block"])
