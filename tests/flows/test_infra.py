"""infra/prefect.yaml names flows that exist, with parameters they accept and no secrets."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deployments_resolve(prefect_server, monkeypatch) -> None:
    for key, value in prefect_server.items():  # importing the flows imports Prefect: point it at a real server
        monkeypatch.setenv(key, value)
    document = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = set()
    for deployment in document["deployments"]:
        path, _, attribute = deployment["entrypoint"].partition(":")
        assert (REPO / path).exists()
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attribute)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        flow.validate_parameters(deployment["parameters"])  # nested settings are checked as a run would check them
        assert not any("secret" in key.lower() or "password" in key.lower() for key in deployment["parameters"])
        names.add(deployment["name"])
    assert names == {"hourly", "backfill", "calibrate"}
    hourly = next(d for d in document["deployments"] if d["name"] == "hourly")
    assert hourly["schedules"][0]["cron"] == "5 * * * *"


def _pinned(image: str) -> bool:
    return ":" in image and not image.endswith(":latest")


def test_compose_stack_references_what_exists_and_keeps_secrets_out() -> None:
    import re

    compose_text = (REPO / "infra" / "compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    for name, service in services.items():
        if "build" in service:
            dockerfile = (REPO / "infra" / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
            assert dockerfile.exists(), name
        else:
            assert _pinned(service["image"]), name
        for dependency in service.get("depends_on", []):
            assert dependency in services, (name, dependency)
    declared = {
        line.split("=")[0] for line in (REPO / "infra" / ".env.example").read_text().splitlines() if "=" in line
    }
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", compose_text))
    assert used <= declared
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET")):
                assert str(value).startswith("${"), key  # from infra/.env, never written here
    worker = services["prefect-worker"]["environment"]
    assert worker["GRADWATCH_MLFLOW_URI"] == "http://mlflow:5000"
    assert worker["PREFECT_API_URL"].startswith("http://prefect-server:4200")


def test_dockerfiles_copy_what_exists_and_pin_their_bases() -> None:
    for dockerfile in (REPO / "infra").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
        assert _pinned(base), dockerfile.name
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), (dockerfile.name, source)


def test_beam_presets_construct_valid_pipeline_options() -> None:
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PortableOptions, WorkerOptions

    from pipelines.settings import PipelineSettings, read_options_file

    def options(runner: str, preset: str):
        return PipelineSettings(runner=runner, beam_options=read_options_file(presets / preset)).options()

    presets = REPO / "infra" / "beam-presets"
    flink = options("FlinkRunner", "flink.options")
    assert flink.get_all_options()["flink_master"] == "flink-jobmanager:8081"
    assert flink.view_as(PortableOptions).environment_type == "DOCKER"
    for preset in ("dataflow-gpu.options", "dataflow-cpu.options"):
        dataflow = options("DataflowRunner", preset)
        google = dataflow.view_as(GoogleCloudOptions)
        assert (google.project, google.region) == ("acme-vision", "europe-west4")
        assert dataflow.view_as(WorkerOptions).sdk_container_image.endswith(":0.1.0")
    assert options("DataflowRunner", "dataflow-gpu.options").view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]


def test_compose_publishes_ports_on_loopback_only() -> None:
    services = yaml.safe_load((REPO / "infra" / "compose.yaml").read_text())["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            # Short syntax HOST_IP:HOST:CONTAINER, or the long syntax's host_ip.
            published[(name, str(port))] = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
    assert published, "MLflow, Prefect and MinIO are reachable from the host"
    assert {key: ip for key, ip in published.items() if ip != "127.0.0.1"} == {}


# Imported by scoring/ only where a user asks for them (--decoder device, timm models): not in the worker images.
OPTIONAL_ON_WORKERS = {"torchvision", "timm"}


def _distribution(spec: str) -> str:
    name = re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _worker_requirements() -> dict[str, str]:
    lines = (REPO / "infra" / "beam-worker-requirements.txt").read_text().splitlines()
    specs = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {_distribution(spec): spec for spec in specs}


def _third_party_imports(*packages: str) -> set[str]:
    names = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.partition(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in {"scoring", "pipelines"}}


def test_the_worker_requirements_cover_what_workers_import_at_the_launchers_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(spec for extra in project["optional-dependencies"].values() for spec in extra),
    ]
    pinned = {_distribution(spec): spec for spec in declared}
    workers = _worker_requirements()
    for name, spec in workers.items():
        assert pinned.get(name) == spec, f"{name}: the worker image pins {spec!r}, pyproject.toml {pinned.get(name)!r}"
    provided = {
        module for module, distributions in importlib.metadata.packages_distributions().items()
        if any(_distribution(distribution) in workers for distribution in distributions)
    }  # fmt: skip
    missing = _third_party_imports("scoring", "pipelines") - provided - OPTIONAL_ON_WORKERS
    assert not missing, f"scoring/ or pipelines/ import {sorted(missing)}, which the worker images do not install"


def test_the_modules_left_out_of_the_worker_images_are_what_the_portable_run_blocks() -> None:
    from tests.pipelines.test_portable import NOT_ON_WORKERS

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    launcher_only = {_distribution(spec) for spec in project["dependencies"]} - set(_worker_requirements())
    modules = {
        module for module, distributions in importlib.metadata.packages_distributions().items()
        if any(_distribution(distribution) in launcher_only for distribution in distributions)
        and not module.startswith("_")
    }  # fmt: skip
    assert modules | {"flows"} <= NOT_ON_WORKERS
    for dockerfile in (REPO / "infra").glob("beam-worker-*.Dockerfile"):
        text = dockerfile.read_text()
        assert "COPY flows" not in text, dockerfile.name
        assert "-r beam-worker-requirements.txt" in text, dockerfile.name
        assert "--no-deps ." in text, dockerfile.name


def test_the_worker_images_run_the_beam_version_the_launcher_installs() -> None:
    """A portable runner refuses a job whose launcher's Beam differs from the SDK container's, and the images' pip
    install would move Beam off their base image's version under a range: one exact version in all four places."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    launcher = next(spec for spec in project["dependencies"] if _distribution(spec) == "apache-beam")
    assert re.fullmatch(r"apache-beam==\d+\.\d+\.\d+", launcher), f"pin one Beam version in pyproject: {launcher!r}"
    version = launcher.partition("==")[2]
    assert _worker_requirements()["apache-beam"] == launcher
    assert importlib.metadata.version("apache-beam") == version
    for dockerfile in (REPO / "infra").glob("beam-worker-*.Dockerfile"):
        bases = re.findall(r"^FROM apache/beam_python3\.11_sdk:(\S+)", dockerfile.read_text(), re.MULTILINE)
        assert bases == [version], f"{dockerfile.name} builds on Beam {bases}, the launcher installs {version}"


def test_make_installs_the_project_beside_the_torch_already_there(tmp_path: Path) -> None:
    """pip 26.3, asked for the project alone, replaced the torch 2.13.0+cpu that make had just installed with 2.14.1
    and 4 GB of CUDA wheels; named with the project, the torch present stays."""
    venv = tmp_path / "venv"
    recipe = subprocess.run(
        ["make", "-n", "-C", str(REPO), f"VENV={venv}", f"{venv}/.installed"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (project_install,) = [line for line in recipe.splitlines() if '-e ".[' in line]
    assert f"\"torch==$({venv}/bin/python -c 'import torch; print(torch.__version__)')\"" in project_install
