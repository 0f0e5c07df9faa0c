"""The RunInference model handler: batches of encoded images in, per-image scores or rejections out.

Beam loads one model per worker process and shares it between the process's threads
(https://beam.apache.org/documentation/ml/about-ml/#use-runinference). With ``large_model`` or
``model_copies`` the model is a proxy in another process, so all work, decoding included, stays inside one
``Scorer.score_encoded`` call per batch: only bytes cross to the model's process, and only scores come back. The
scorer is built in the process that runs it, so its backend is picked there: an ONNX Runtime session (which does not
pickle) is made in the model's process, and ``backend="auto"`` falls back to torch there, saying why, where
onnxruntime does not import (tests/pipelines/test_inference_onnx.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import apache_beam as beam
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from pipelines.records import REJECTED, EncodedImage, Rejected
from scoring import (
    DEFAULT_MODEL,
    ImageDecodeError,
    ModelSpecError,
    Scorer,
    ScoringSettings,
    load_scorer,
    resolve_device,
)
from scoring.features import FEATURES


def spec_with_absolute_files(spec: str) -> str:
    """A model spec whose local files (a model file, ``?weights=``) are named by absolute path.

    A spec names files relative to the launcher's working directory; an SDK worker has its own, and refused
    ``--model tiny.pt`` as "no file exists at that path" (the portable run of tests/pipelines/test_portable.py).
    Names with a colon are factories or hub architectures (``module:build``, ``timm:NAME``), never files here.
    """
    target, question, query = spec.partition("?")
    if target != DEFAULT_MODEL and ":" not in target and os.path.isfile(target):
        target = os.path.abspath(target)
    options = parse_qsl(query, keep_blank_values=True)
    if any(key == "weights" and os.path.isfile(value) for key, value in options):
        absolute = [(key, os.path.abspath(value) if key == "weights" else value) for key, value in options]
        query = urlencode(absolute, safe="/")  # a path as written in messages, not %2F-escaped
    return f"{target}{question}{query}"


class ScorerModelHandler(ModelHandler[EncodedImage, PredictionResult, Scorer]):
    """Decodes and scores :class:`EncodedImage` batches with :func:`scoring.load_scorer`.

    Its one job is turning a batch of image bytes into scores. Decoding lives here, not in a DoFn before it,
    so the scorer's host threads decode one group while the device scores the last, or the GPU decodes JPEGs
    itself. Each result's ``inference`` is the image's scores, or the ``ImageDecodeError`` that rejects it.
    """

    def __init__(
        self,
        settings: ScoringSettings,
        *,
        expected_model_id: str,
        fitted_scores: Mapping[str, Any] | None = None,
        cpu_threads: int | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
        load_scorer_fn: Callable[..., Scorer] = load_scorer,
    ) -> None:
        """
        Args:
            settings: what ``load_scorer`` loads on each worker, and how it scores; ``settings.batch_size``
                bounds the batches Beam forms (by device when None).
            expected_model_id: the model id the pipeline was built for; a worker whose weights differ
                (another image, another file at the same path) refuses to score.
            fitted_scores: what the scores fitted on a calibration's reference learned there, by score name.
            cpu_threads: torch intra-op threads per worker process; set it to cores / workers so that
                several local workers do not oversubscribe the CPU.
            large_model: load one model per machine and share it between processes (GPU workers).
            model_copies: how many such shared copies per machine.
            load_scorer_fn: builds the scorer; injected for other loaders (a registry, a cache).
        """
        batch_size = settings.batch_size_on(resolve_device(settings.device).type)
        super().__init__(
            # Up to 4 images a batch may wait for: a CPU scores 4 at a time anyway.
            min_batch_size=min(batch_size, 4),
            max_batch_size=batch_size,
            large_model=large_model,
            model_copies=model_copies,
        )
        # Pickled to workers, which resolve paths against their own working directory.
        self._settings = dataclasses.replace(settings, model=spec_with_absolute_files(settings.model))
        self._expected_model_id = expected_model_id
        self._fitted_scores = dict(fitted_scores or {})
        self._cpu_threads = cpu_threads
        self._load_scorer_fn = load_scorer_fn

    def load_model(self) -> Scorer:
        if self._cpu_threads:
            torch.set_num_threads(self._cpu_threads)
        scorer = self._load_scorer_fn(self._settings, fitted_scores=self._fitted_scores)
        if scorer.model_id != self._expected_model_id:
            raise ModelSpecError(
                f"worker {os.uname().nodename} loaded {scorer.model_id} for {self._settings.model!r}, but the "
                f"pipeline was built for {self._expected_model_id}; deploy the same weights to launcher and workers"
            )
        return scorer

    def run_inference(
        self, batch: Sequence[EncodedImage], model: Scorer, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """Decode and score one batch.

        Args:
            batch: images' bytes.
            model: the scorer, or its proxy when shared across processes.
            inference_args: unused; scoring takes no per-call arguments.

        Returns:
            One PredictionResult per image: the image, and either a dict of its scores (and ``pred``) or the
            ``ImageDecodeError`` that rejects it.
        """
        outcomes = model.score_encoded([image.data for image in batch], sources=[image.uri for image in batch])
        for image, outcome in zip(batch, outcomes, strict=True):
            yield PredictionResult(image, outcome)

    def get_num_bytes(self, batch: Sequence[EncodedImage]) -> int:
        return sum(len(image.data) for image in batch)

    def get_metrics_namespace(self) -> str:
        return "gradwatch_inference"


class ScoreImages(beam.PTransform):
    """EncodedImage -> ``rows`` (one scores-table row per scored image) and ``rejected`` (those that did not decode).

    ``columns`` are the measured values each row keeps: scores and image properties.
    """

    def __init__(self, handler: ScorerModelHandler, *, model_id: str, columns: Sequence[str]) -> None:
        super().__init__()
        self._handler = handler
        self._rows = _ScoreRows(model_id=model_id, columns=columns)

    def expand(self, images: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (
            images
            | "RunInference" >> RunInference(self._handler)
            | "ToRows" >> beam.ParDo(self._rows).with_outputs(REJECTED, main="rows")
        )


class _ScoreRows(beam.DoFn):
    """PredictionResult -> a scores row (main), or a decode Rejected (``rejected``) for an image that failed."""

    def __init__(self, *, model_id: str, columns: Sequence[str]) -> None:
        self._model_id = model_id
        self._columns = tuple(columns)

    def process(self, result: PredictionResult) -> Iterator[Any]:
        image, outcome = result.example, result.inference
        if isinstance(outcome, ImageDecodeError):
            rejection = Rejected(image.uri, image.event_time, "decode", outcome.reason, str(outcome), image.segment)
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
            return
        Metrics.counter("gradwatch", "scored").inc()
        yield {
            "image_id": image.image_id,
            "uri": image.uri,
            "event_time": image.event_time,
            "segment": image.segment,
            "model_id": self._model_id,
            **{name: outcome[name] for name in self._columns},
            "pred": outcome["pred"],
            **({FEATURES: outcome[FEATURES]} if FEATURES in outcome else {}),
        }
