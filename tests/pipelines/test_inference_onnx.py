"""The model handler on the ONNX Runtime backend, in the worker and behind Beam's proxy to a shared model."""

from __future__ import annotations

import datetime as dt
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.inference import ScorerModelHandler
from pipelines.records import EncodedImage
from scoring import ScoringSettings, load_model, load_scorer
from tests.scoring.test_onnx_backend import SCORES_AGREE, encoded_images

TINY = "tests.scoring.tiny_models:build"


class _Keep(beam.DoFn):
    """Writes each image's outcome to a file of its own: DoFns run on pickled copies, so a list would stay empty."""

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, result) -> tuple[()]:
        name = result.example.image_id
        Path(self._folder, name).write_bytes(pickle.dumps(result.inference))
        return ()  # Beam 2.78 refuses a process() whose return hint is None


def score_through_beam(handler: ScorerModelHandler, images: list[bytes], folder: Path) -> dict[str, dict]:
    """Each image's scores by index, as RunInference hands them on."""
    when = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    encoded = [
        EncodedImage(image_id=str(index), uri=f"mem://{index}.jpg", event_time=when, segment="", data=data)
        for index, data in enumerate(images)
    ]
    folder.mkdir()
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = pipeline | beam.Create(encoded) | RunInference(handler) | beam.ParDo(_Keep(str(folder)))
    return {path.name: pickle.loads(path.read_bytes()) for path in folder.iterdir()}


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """An onnxruntime scorer in this process (the in-worker run) leaves torch one thread: later tests get theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("large_model", [False, True], ids=["in-worker", "shared-behind-proxy"])
def test_handler_scores_on_onnxruntime_as_torch_does(
    large_model: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the proxy the scorer, its ONNX Runtime session included, lives in the model's process: the export
    appears in the cache from there, and the scores agree with torch's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADWATCH_CACHE_DIR", str(cache))
    images = encoded_images(6)
    settings = ScoringSettings(model=TINY, device="cpu", backend="onnxruntime")
    handler = ScorerModelHandler(settings, expected_model_id=load_model(TINY).model_id, large_model=large_model)
    scored = score_through_beam(handler, images, tmp_path / "scored")
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1
    reference = load_scorer(TINY, device="cpu", backend="torch")
    expected = reference.score_encoded(images, sources=[f"mem://{index}.jpg" for index in range(len(images))])
    for index, want in enumerate(expected):
        got = scored[str(index)]
        for name in reference.score_names:
            assert abs(got[name] - want[name]) <= SCORES_AGREE * abs(want[name]), name
        assert got["pred"] == want["pred"]


def test_handler_without_onnxruntime_falls_back_to_torch_on_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADWATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    handler = ScorerModelHandler(ScoringSettings(model=TINY, device="cpu"), expected_model_id=load_model(TINY).model_id)
    assert handler.load_model().backend == "torch"
    scored = score_through_beam(handler, encoded_images(2), tmp_path / "scored")
    assert len(scored) == 2
    assert all(np.isfinite(outcome["gradnorm"]) for outcome in scored.values())
    assert not (tmp_path / "cache").exists()
