"""The pipeline on Beam's portable runner, the way Flink and Dataflow run it: a job service and a pool of SDK worker
processes on loopback, every DoFn and the model handler pickled to workers over the Fn API, the model loaded there.

Flink's and Spark's job servers need jars from a registry these machines do not reach; Beam's local job service
speaks the same job API and runs the pipeline on EXTERNAL workers from the pool, each a process of its own started
in a working directory that is not the launcher's. The first tests here need no services: each is the regression
test of a fix the portable run called for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metricbase import MetricName
from datasketches import kll_doubles_sketch

from pipelines.inference import ScorerModelHandler
from pipelines.pipeline import counter_totals
from pipelines.store import OutputStore
from scoring import ScoringSettings, load_model
from tests.flows.conftest import free_port
from tests.pipelines.conftest import TINY, utc, write_image
from tests.scoring.tiny_models import TinyClassifier

REPO = Path(__file__).resolve().parents[2]
# Where build_counting_loads records each load: a file per process, a line per load.
LOADS_ENV = "GRADWATCH_TEST_MODEL_LOADS"
COUNTING_LOADS = "tests.pipelines.test_portable:build_counting_loads"
# Bounds a service's start-up: both answer within seconds here, most of it importing Beam.
START_UP_S = 60
# Ranks at which the sketches of the two runs are compared.
QUANTILES = np.linspace(0, 1, 11)
# Bounds one command line run; the slowest here (the monitor's two windows) takes under 40 s.
COMMAND_S = 180
# What the worker images (infra/beam-worker-*.Dockerfile) leave out: the launcher's packages. The pool's processes
# cannot import them, so a DoFn, handler or callable that needs one on a worker fails these tests, not a cluster.
NOT_ON_WORKERS = frozenset({"flows", "mlflow", "prefect", "great_expectations", "rich", "matplotlib", "mpl_toolkits",
                            "pylab", "pandas"})  # fmt: skip
# Started by every process of the pool (Python imports sitecustomize from its path at start-up).
WORKER_SITE = f"""
import sys


class _NotInTheWorkerImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(NOT_ON_WORKERS)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the Beam worker image)", name=name)
        return None


sys.meta_path.insert(0, _NotInTheWorkerImage())
"""


def build_counting_loads() -> TinyClassifier:
    """The tiny model, each load recorded in a file named by the loading process's id."""
    with (Path(os.environ[LOADS_ENV]) / str(os.getpid())).open("a") as file:
        file.write("load\n")
    return TinyClassifier()


# -- regression tests of the fixes, without services ---------------------------------------------------------


def test_a_relative_out_pickled_by_the_launcher_is_written_where_the_launcher_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher, worker = tmp_path / "launcher", tmp_path / "worker"
    launcher.mkdir()
    worker.mkdir()
    monkeypatch.chdir(launcher)
    shipped = pickle.dumps(OutputStore("out"))
    monkeypatch.chdir(worker)
    pickle.loads(shipped).write_partition("scores", "2026-11-26T13-00-00Z", pa.table({"n": [1]}), part="feed")
    assert [path.relative_to(tmp_path) for path in tmp_path.rglob("*.parquet")] == [
        Path("launcher/out/scores/window_start=2026-11-26T13-00-00Z/part-feed.parquet")
    ]


@pytest.mark.parametrize("spec_kind", ["torchscript file", "factory with weights"])
def test_a_handler_pickled_with_relative_model_files_loads_them_in_another_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_kind: str
) -> None:
    launcher, worker = tmp_path / "launcher", tmp_path / "worker"
    launcher.mkdir()
    worker.mkdir()
    monkeypatch.chdir(launcher)
    if spec_kind == "torchscript file":
        torch.jit.script(TinyClassifier(seed=3)).save("tiny.pt")
        spec = "tiny.pt"
    else:
        torch.save(TinyClassifier(seed=3).state_dict(), "weights.pth")
        spec = f"{TINY}?weights=weights.pth"
    expected = load_model(spec).model_id
    assert expected != load_model(TINY).model_id  # the weights file, not the factory's own, makes the id
    shipped = pickle.dumps(ScorerModelHandler(ScoringSettings(model=spec, device="cpu"), expected_model_id=expected))
    monkeypatch.chdir(worker)
    assert pickle.loads(shipped).load_model().model_id == expected


def test_counters_fall_back_to_attempted_values_where_the_runner_commits_none() -> None:
    def counter(step: str, name: str, committed: int | None, attempted: int) -> MetricResult:
        return MetricResult(MetricKey(step, MetricName("gradwatch", name)), committed, attempted)

    committing = [counter("Read", "listed", 11, 12), counter("ToRows", "scored", 8, 8)]
    assert counter_totals(committing) == Counter({"listed": 11, "scored": 8})
    attempted_only = [counter("Read", "listed", None, 11), counter("Tick", "listed", None, 2)]
    assert counter_totals(attempted_only) == Counter({"listed": 13})


# -- the portable runner --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PortableServices:
    """A running job service and worker pool, and what a command line needs to use them."""

    flags: tuple[str, ...]
    env: dict[str, str]
    worker_env: dict[str, str]
    loads: Path
    pool_log: Path
    job_log: Path

    def take_loads(self) -> dict[int, int]:
        """Model loads per process id since the last call."""
        loads = {}
        for path in self.loads.iterdir():
            loads[int(path.name)] = len(path.read_text().splitlines())
            path.unlink()
        return loads

    def workers_started(self) -> int:
        """SDK worker processes the pool has started, by its log."""
        return self.pool_log.read_text().count("Starting worker with command")

    def splits(self) -> int:
        """Bundles the job service has split in two, by its log of each split's response."""
        return self.job_log.read_text().count("first_residual_element")


def _start(command: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as output:
        # A session of its own: stopping its process group stops the SDK workers a pool started too.
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def _answers(process: subprocess.Popen, port: int) -> bool:
    """Whether the process listens on the port within START_UP_S; False once it exits or the time is up."""
    deadline = time.monotonic() + START_UP_S
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen) -> None:
    """Stop a service's whole process group, the SDK workers a pool started with it, even after it died itself."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # what outlived SIGTERM, an SDK worker in a bundle
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def portable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortableServices]:
    root = tmp_path_factory.mktemp("portable")
    (root / "loads").mkdir()
    # The pool's workers run in a folder of their own, as on another machine, where a path relative to the
    # launcher's working directory means something else.
    (root / "workers").mkdir()
    (root / "worker-site").mkdir()
    (root / "worker-site" / "sitecustomize.py").write_text(WORKER_SITE)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        # The pool starts its SDK workers as `python` from PATH.
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        # The test models' package, as a worker image installs the package of its model.
        "PYTHONPATH": str(REPO),
        LOADS_ENV: str(root / "loads"),
    }
    # Only the services' processes are workers: the launcher (gradwatch, with env) imports flows/.
    worker_env = {**env, "PYTHONPATH": f"{root / 'worker-site'}{os.pathsep}{REPO}"}
    job_port, pool_port = free_port(), free_port()
    while pool_port == job_port:  # each probe frees its port at once, so two can name the same one
        pool_port = free_port()
    services = []
    try:
        pool = _start(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
            cwd=root / "workers", env=worker_env, log=root / "pool.log",
        )  # fmt: skip
        services.append(pool)
        job = _start(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
            cwd=root, env=worker_env, log=root / "job.log",
        )  # fmt: skip
        services.append(job)
        if not _answers(pool, pool_port):
            pytest.skip(f"Beam's SDK worker pool did not start: {(root / 'pool.log').read_text()[-2000:]}")
        if not _answers(job, job_port):
            pytest.fail(f"Beam's job service did not start: {(root / 'job.log').read_text()[-2000:]}")
        flags = (
            "--runner", "PortableRunner",
            "--beam-option", f"job_endpoint=localhost:{job_port}",
            "--beam-option", "environment_type=EXTERNAL",
            "--beam-option", f"environment_config=localhost:{pool_port}",
        )  # fmt: skip
        yield PortableServices(flags, env, worker_env, root / "loads", root / "pool.log", root / "job.log")
    finally:
        for process in services:
            _stop(process)


@dataclasses.dataclass(frozen=True)
class Ran:
    pid: int
    returncode: int
    stdout: str
    stderr: str


def _gradwatch(*args: str, cwd: Path, env: dict[str, str]) -> Ran:
    script = Path(sys.executable).parent / "gradwatch"
    process = subprocess.Popen([str(script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=COMMAND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"gradwatch {' '.join(args)} ran past {COMMAND_S} s: {stderr.decode()[-3000:]}")
    return Ran(process.pid, process.returncode, stdout.decode(), stderr.decode())


def _feed(root: Path) -> None:
    """Good images over two windows and two cameras, beside what production sends that is not an image."""
    first, second = utc("2026-11-26T13:20:00Z"), utc("2026-11-26T14:10:00Z")
    for index in range(4):
        write_image(root / "cam-1" / f"{index}.png", index, mtime=first)
    for index in range(3):
        write_image(root / "cam-2" / "deep" / f"{index}.jpg", 10 + index, mtime=second)
    write_image(root / "top.png", 99, mtime=second)
    hostile = {
        "cam-1/empty.jpg": b"",
        "cam-2/truncated.png": (root / "top.png").read_bytes()[:120],
        "notes.txt": b"not an image",
    }
    for name, data in hostile.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (first.timestamp(), first.timestamp()))
    (root / ".hidden.png").write_bytes((root / "top.png").read_bytes())


def _rows(out: Path, table: str) -> list[dict]:
    key_columns = ("window_start", "segment", "score", "uri")
    rows = OutputStore(str(out)).read_table(table).to_pylist()
    return sorted(rows, key=lambda row: tuple(str(row.get(column)) for column in key_columns))


def _assert_same_rows(portable: list[dict], local: list[dict], table: str) -> None:
    assert len(portable) == len(local), table
    for on_portable, on_local in zip(portable, local, strict=True):
        assert on_portable.keys() == on_local.keys(), table
        for column, value in on_local.items():
            where = f"{table}.{column} of {on_local.get('uri') or on_local.get('score')}"
            if column == "sketch":
                # Serialised in the order bundles merged their values; what a quantile reads is the same.
                shipped, kept = (kll_doubles_sketch.deserialize(row[column]) for row in (on_portable, on_local))
                assert shipped.n == kept.n, where
                np.testing.assert_allclose(shipped.get_quantiles(QUANTILES), kept.get_quantiles(QUANTILES), rtol=1e-6)
            elif isinstance(value, float):
                # Batches of other sizes, and moments merged from two bundles: float32 digits, summed in another order.
                assert math.isclose(on_portable[column], value, rel_tol=1e-6, abs_tol=1e-12) or (
                    math.isnan(value) and math.isnan(on_portable[column])
                ), where
            else:
                assert on_portable[column] == value, where


def test_the_pools_processes_cannot_import_what_the_worker_images_leave_out(portable: PortableServices) -> None:
    for module in ("flows.cli", "mlflow", "great_expectations"):
        refused = subprocess.run([sys.executable, "-c", f"import {module}"], env=portable.worker_env,
                                 capture_output=True, text=True)  # fmt: skip
        assert refused.returncode != 0, module
        assert "not in the Beam worker image" in refused.stderr, module
    allowed = subprocess.run([sys.executable, "-c", "import pipelines.inference, scoring, apache_beam"],
                             env=portable.worker_env, capture_output=True, text=True)  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr


def test_score_on_portable_workers_equals_the_local_runner(portable: PortableServices, tmp_path: Path) -> None:
    _feed(tmp_path / "feed")
    # SOURCE and OUT relative to the launcher's working directory, which is not the workers'.
    common = ("score", "feed", "--model", COUNTING_LOADS, "--window", "1h")
    local = _gradwatch(*common, "--out", "out-local", cwd=tmp_path, env=portable.env)
    assert local.returncode == 0, local.stderr
    portable.take_loads()
    workers_before = portable.workers_started()
    # The job service starts one SDK worker a job and gives a stage one bundle (it reads no direct_num_workers):
    # Beam's runner-side split request, 3 s into the inference stage's bundle (which waits for its input until
    # then), hands the second half of the images back as a second bundle on the same worker.
    split = {"ScoreImages/RunInference/BeamML_RunInference": {"timings": [3], "fractions": [0.5]}}
    splitting = ("--beam-option", f"direct_test_splits={json.dumps(split)}")
    splits_before = portable.splits()
    remote = _gradwatch(*common, "--out", "out-portable", *portable.flags, *splitting, cwd=tmp_path, env=portable.env)
    assert remote.returncode == 0, remote.stderr
    assert portable.splits() - splits_before == 1, "the inference stage ran in one bundle: nothing is tested below"

    reconciliation = "reconciliation: 11 listed = 8 scored + 3 rejected: ok"
    assert reconciliation in local.stderr
    assert reconciliation in remote.stderr
    assert "decode/empty 1, decode/not_an_image 1, decode/truncated 1" in remote.stderr
    assert "windows    2" in remote.stderr
    for table in ("scores", "windows", "rejected"):
        _assert_same_rows(_rows(tmp_path / "out-portable", table), _rows(tmp_path / "out-local", table), table)
    assert {row["window_start"].hour for row in _rows(tmp_path / "out-portable", "scores")} == {13, 14}

    loads = portable.take_loads()
    assert loads.pop(remote.pid) == 1  # the launcher, for the model's id and preprocessing
    assert portable.workers_started() - workers_before == 1
    assert list(loads.values()) == [1], loads  # once in the SDK worker, for both bundles


def test_monitor_on_portable_workers_decides_two_windows_and_pages_a_webhook(
    portable: PortableServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor on the same runner with --large-model: the model in one process per machine, behind Beam's proxy."""
    from flows.alerts import SECRET_ENV
    from flows.registry import MONITORING_EXPERIMENT, ThresholdRegistry
    from tests.flows.receiver import Receiver
    from tests.flows.test_monitor import START, _approve, _flat, _noise

    monkeypatch.chdir(tmp_path)  # MLflow keeps a sqlite store's artifacts under the working directory
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ThresholdRegistry(mlflow_uri)
    _approve(registry, tmp_path)
    for index in range(30):
        _noise(tmp_path / "feed" / f"h0-{index}.png", index, START + dt.timedelta(minutes=index))
        _flat(tmp_path / "feed" / f"h1-{index}.png", 100 + index, START + dt.timedelta(hours=1, minutes=index))
    # Rejections cross from the model's process too: with --large-model every batch is scored through its proxy.
    (tmp_path / "feed" / "h0-truncated.png").write_bytes((tmp_path / "feed" / "h0-0.png").read_bytes()[:100])
    (tmp_path / "feed" / "h0-empty.jpg").write_bytes(b"")
    for name in ("h0-truncated.png", "h0-empty.jpg"):
        os.utime(tmp_path / "feed" / name, (START.timestamp() + 60,) * 2)
    receiver = Receiver()
    try:
        until = (START + dt.timedelta(hours=2)).isoformat()
        result = _gradwatch(
            "monitor", "feed", "--out", "out", "--model", TINY, "--since", START.isoformat(), "--until", until,
            "--webhook", receiver.url, "--large-model", *portable.flags,
            cwd=tmp_path, env={**portable.env, "GRADWATCH_MLFLOW_URI": mlflow_uri, SECRET_ENV: "s3cret"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"{START:%Y-%m-%d %H:%M}  ok")
        assert lines[1].startswith(f"{START + dt.timedelta(hours=1):%Y-%m-%d %H:%M}  drift")
        assert "2 window(s) processed" in result.stdout
        kinds = sorted((post["json"]["kind"], post["json"]["window"]["start"][11:13]) for post in receiver.received)
        # The gate on image metadata flags files too small to be frames: the two rejected at 10:00, and the
        # lens-cap frames at 11:00, which the drift alert pages on its own.
        assert kinds == [("data_quality", "10"), ("data_quality", "11"), ("drift", "11")]
        quality = {
            post["json"]["window"]["start"][11:13]: post["json"]["decision"]["failed_expectations"]
            for post in receiver.received
            if post["json"]["kind"] == "data_quality"
        }
        assert [(f["column"], f["observed"]) for f in quality["10"]] == [("bytes", "2 unexpected")]
    finally:
        receiver.close()
    decisions = OutputStore(str(tmp_path / "out")).read_table("decisions").to_pylist()
    assert sorted((row["window_start"].hour, row["status"]) for row in decisions) == [(10, "ok"), (11, "drift")]
    assert OutputStore(str(tmp_path / "out")).read_table("scores").num_rows == 60
    rejected = OutputStore(str(tmp_path / "out")).read_table("rejected").to_pylist()
    assert sorted((row["window_start"].hour, Path(row["uri"]).name, row["reason"]) for row in rejected) == [
        (10, "h0-empty.jpg", "empty"),
        (10, "h0-truncated.png", "truncated"),
    ]
    (run,) = registry.client.search_runs([registry.client.get_experiment_by_name(MONITORING_EXPERIMENT).experiment_id])
    assert run.data.params["runner"] == "PortableRunner"
