"""Runner selection and pass-through pipeline options (no cluster is started)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, StandardOptions, WorkerOptions
from apache_beam.pipeline import PipelineVisitor

from pipelines.pipeline import ScoringConfig, build_pipeline
from pipelines.settings import PipelineSettings
from scoring import ScoringSettings


def test_local_runner_with_worker_processes() -> None:
    direct = PipelineSettings(workers=3).options().view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (3, "multi_processing")
    assert PipelineSettings().options().view_as(DirectOptions).direct_running_mode == "in_memory"


def test_flink_options_pass_through() -> None:
    settings = PipelineSettings(
        runner="FlinkRunner",
        beam_options=("flink_master=flink-jobmanager:8081", "environment_type=DOCKER", "parallelism=8"),
    )
    options = settings.options().get_all_options()
    assert options["runner"] == "FlinkRunner"
    assert (options["flink_master"], options["environment_type"], options["parallelism"]) == (
        "flink-jobmanager:8081",
        "DOCKER",
        8,
    )


def test_dataflow_gpu_options_pass_through() -> None:
    accelerator = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    settings = PipelineSettings(
        runner="DataflowRunner",
        beam_options=(
            "project=acme-vision",
            "region=europe-west4",
            "sdk_container_image=europe-docker.pkg.dev/acme-vision/gradwatch/beam-worker-gpu:0.1.0",
            f"dataflow_service_options={accelerator}",
            "machine_type=g2-standard-8",
        ),
    )
    options = settings.options()
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [accelerator]
    assert options.view_as(WorkerOptions).machine_type == "g2-standard-8"


@pytest.mark.parametrize("option", ["flink_master", "=value", "--"])
def test_malformed_options_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        PipelineSettings(beam_options=(option,))


def _model_handlers(config: ScoringConfig) -> list:
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, config, model_id="build@0", max_bytes=1000, staging="never-run")
    handlers = []

    class Collect(PipelineVisitor):
        def enter_composite_transform(self, node) -> None:
            if isinstance(node.transform, RunInference):
                handlers.append(node.transform._model_handler)

    pipeline.visit(Collect())
    return handlers


@pytest.mark.parametrize(("device", "workers", "shared"), [("cuda", 2, True), ("cuda", 1, False), ("cpu", 2, False)])
def test_local_gpu_worker_processes_share_one_model_copy(device: str, workers: int, shared: bool) -> None:
    config = ScoringConfig(
        source="/in", out="/out", scoring=ScoringSettings(device=device), pipeline=PipelineSettings(workers=workers)
    )
    [handler] = _model_handlers(config)
    assert handler.share_model_across_processes() is shared


def test_runs_are_described_without_credentials_and_unknown_runners_refused() -> None:
    from pipelines.settings import RunnerError

    options = (
        "artifact_endpoint=http://ci:t0ken@cache:8098",
        "s3_secret_access_key=wJalrXUtnFEMI",
        "--azure_connection_string=DefaultEndpointsProtocol=https;AccountKey=KEY==",
        "parallelism=8",
    )
    settings = PipelineSettings(runner="FlinkRunner", beam_options=options)
    assert settings.described() == {
        "runner": "FlinkRunner",
        "beam_options": "artifact_endpoint=http://cache:8098 s3_secret_access_key=*** --azure_connection_string=*** "
        "parallelism=8",
    }
    assert settings.credential_options() == ["s3_secret_access_key", "azure_connection_string"]
    settings.check()
    PipelineSettings().check()
    with pytest.raises(RunnerError, match="'FlinkRuner' is not a Beam runner"):
        PipelineSettings(runner="FlinkRuner").check()
