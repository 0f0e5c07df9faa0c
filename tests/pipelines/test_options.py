"""Runner selection and pass-through pipeline options (no cluster is started)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, StandardOptions, WorkerOptions
from apache_beam.pipeline import PipelineVisitor

from pipelines.pipeline import ScoringConfig, build_pipeline, pipeline_options
from scoring import Preprocessing


def test_local_runner_with_worker_processes() -> None:
    options = pipeline_options(ScoringConfig(source="feed", out="out", workers=3))
    direct = options.view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (3, "multi_processing")
    assert pipeline_options(ScoringConfig(source="feed", out="out")).view_as(DirectOptions).direct_running_mode == (
        "in_memory"
    )


def test_flink_options_pass_through() -> None:
    config = ScoringConfig(
        source="s3://feed/",
        out="s3://out/",
        runner="FlinkRunner",
        beam_options=("flink_master=flink-jobmanager:8081", "environment_type=DOCKER", "parallelism=8"),
    )
    options = pipeline_options(config).get_all_options()
    assert options["runner"] == "FlinkRunner"
    assert (options["flink_master"], options["environment_type"], options["parallelism"]) == (
        "flink-jobmanager:8081",
        "DOCKER",
        8,
    )


def test_dataflow_gpu_options_pass_through() -> None:
    accelerator = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    config = ScoringConfig(
        source="gs://feed/",
        out="gs://out/",
        runner="DataflowRunner",
        beam_options=(
            "project=acme-vision",
            "region=europe-west4",
            "sdk_container_image=europe-docker.pkg.dev/acme-vision/gradwatch/beam-worker-gpu:0.1.0",
            f"dataflow_service_options={accelerator}",
            "machine_type=g2-standard-8",
        ),
    )
    options = pipeline_options(config)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [accelerator]
    assert options.view_as(WorkerOptions).machine_type == "g2-standard-8"


@pytest.mark.parametrize("option", ["flink_master", "=value", "--"])
def test_malformed_options_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ScoringConfig(source="feed", out="out", beam_options=(option,))


def _model_handlers(config: ScoringConfig) -> list:
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, config, model_id="build@0", preprocessing=Preprocessing(), score_names=("gradnorm",))
    handlers = []

    class Collect(PipelineVisitor):
        def enter_composite_transform(self, node) -> None:
            if isinstance(node.transform, RunInference):
                handlers.append(node.transform._model_handler)

    pipeline.visit(Collect())
    return handlers


@pytest.mark.parametrize(("device", "workers", "shared"), [("cuda", 2, True), ("cuda", 1, False), ("cpu", 2, False)])
def test_local_gpu_worker_processes_share_one_model_copy(device: str, workers: int, shared: bool) -> None:
    config = ScoringConfig(source="/in", out="/out", device=device, workers=workers)
    [handler] = _model_handlers(config)
    assert handler.share_model_across_processes() is shared
