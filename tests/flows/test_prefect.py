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
    # The worker's environment names no tracking store: the deployment's mlflow_uri parameter must be what it reads.
    for key in ("GRADWATCH_MLFLOW_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
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
    parameters = {
        "source": str(tmp_path / "feed"),
        "out": str(out),
        "scoring": {"model": TINY},
        "until": until,
        "mlflow_uri": mlflow_uri,
    }
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


def test_deploy_records_absolute_paths_and_the_tracking_store(tmp_path: Path, prefect_server) -> None:
    # A worker runs from its own working directory: relative SOURCE/OUT and sqlite:///mlflow.db named other files
    # there, and the run failed with NoApprovedThresholdError against an empty store.
    gradwatch = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    env = {**os.environ, **prefect_server, "MLFLOW_TRACKING_URI": "sqlite:///team.db"}
    env.pop("GRADWATCH_MLFLOW_URI", None)
    command = [gradwatch, "deploy", "feed", "--out", "out", "--name", "relative", "--work-pool", "gradwatch-paths"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parameters = client.read_deployment_by_name("gradwatch-monitor/relative").parameters
    resolved = tmp_path.resolve()
    assert parameters["source"] == str(resolved / "feed")
    assert parameters["out"] == str(resolved / "out")
    assert parameters["mlflow_uri"] == f"sqlite:///{resolved / 'team.db'}"


def test_deploy_refuses_a_tracking_uri_with_a_password(tmp_path: Path, prefect_server) -> None:
    gradwatch = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    env = {**os.environ, **prefect_server, "GRADWATCH_MLFLOW_URI": "https://ml:hunter2@mlflow.acme.io"}
    result = subprocess.run(
        [gradwatch, "deploy", "feed", "--out", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "carries a credential" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_deploy_without_a_server_refuses_instead_of_registering_into_a_temporary_one(tmp_path: Path) -> None:
    gradwatch = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile that names a server
    result = subprocess.run(
        [gradwatch, "deploy", str(tmp_path), "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "deploy needs a running Prefect server" in result.stderr
    assert "gradwatch serve" in result.stderr
    assert "Successfully" not in result.stdout


def test_a_configuration_error_fails_the_flow_run_at_once(tmp_path: Path, prefect_server, monkeypatch) -> None:
    # NoApprovedThresholdError was retried three times with back-off (10 s, 60 s, 300 s) before failing.
    for key, value in prefect_server.items():
        monkeypatch.setenv(key, value)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.prefect_flows import monitor

    _noise(tmp_path / "feed" / "0.png", 0, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    empty_store = f"sqlite:///{tmp_path / 'empty.db'}"
    started = time.monotonic()
    state = monitor(
        source=str(tmp_path / "feed"), out=str(tmp_path / "out"), mlflow_uri=empty_store, scoring={"model": TINY},
        return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    assert time.monotonic() - started < 10, "the first retry waits 10 s"
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    [load] = [run for run in task_runs if run.name.startswith("load approved thresholds")]
    assert load.run_count == 1
    assert load.state.is_failed()
