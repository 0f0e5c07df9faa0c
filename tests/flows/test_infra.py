"""infra/prefect.yaml names flows that exist, with parameters they accept and no secrets."""

from __future__ import annotations

import importlib
import inspect
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
