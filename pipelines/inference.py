"""The RunInference model handler: batches of encoded images in, per-image scores or rejections out.

Beam loads one model per worker process and shares it between the process's threads
(https://beam.apache.org/documentation/ml/about-ml/#use-runinference). With ``large_model`` or
``model_copies`` the model is a proxy in another process, so all work, decoding included, stays inside one
``Scorer.score_encoded`` call per batch: only bytes cross to the model's process, and only scores come back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.records import EncodedImage
from scoring import ModelSpecError, Scorer, load_scorer


class ScorerModelHandler(ModelHandler[EncodedImage, PredictionResult, Scorer]):
    """Decodes and scores :class:`EncodedImage` batches with :func:`scoring.load_scorer`.

    Its one job is turning a batch of image bytes into scores. Decoding lives here, not in a DoFn before it,
    so the scorer's host threads decode one group while the device scores the last, or the GPU decodes JPEGs
    itself. Each result's ``inference`` is the image's scores, or the ``ImageDecodeError`` that rejects it.
    """

    def __init__(
        self,
        model_spec: str,
        *,
        expected_model_id: str,
        device: str = "auto",
        temperature: float = 1.0,
        precision: str = "fp32",
        compile: bool = False,
        decoder: str = "host",
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        cpu_threads: int | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
        load_scorer_fn: Callable[..., Scorer] = load_scorer,
    ) -> None:
        """
        Args:
            model_spec: what ``load_scorer`` loads on each worker.
            expected_model_id: the model id the pipeline was built for; a worker whose weights differ
                (another image, another file at the same path) refuses to score.
            device: ``auto``, ``cpu``, ``cuda``...
            temperature: T of GradNorm and Energy.
            precision: ``fp32``, or ``fp16``/``bf16`` autocast of the network (GPU tensor cores).
            compile: ``torch.compile`` the network on each worker.
            decoder: ``host`` (Pillow threads) or ``device`` (JPEGs on the scorer's device, needs torchvision).
            min_batch_size: smallest batch Beam's BatchElements forms.
            max_batch_size: largest batch; size it to the device's memory.
            cpu_threads: torch intra-op threads per worker process; set it to cores / workers so that
                several local workers do not oversubscribe the CPU.
            large_model: load one model per machine and share it between processes (GPU workers).
            model_copies: how many such shared copies per machine.
            load_scorer_fn: builds the scorer; injected for other loaders (a registry, a cache).
        """
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
            model_copies=model_copies,
        )
        self._model_spec = model_spec
        self._expected_model_id = expected_model_id
        self._scorer_options = {
            "device": device,
            "temperature": temperature,
            "precision": precision,
            "compile": compile,
            "decoder": decoder,
        }
        self._cpu_threads = cpu_threads
        self._load_scorer_fn = load_scorer_fn

    def load_model(self) -> Scorer:
        if self._cpu_threads:
            torch.set_num_threads(self._cpu_threads)
        scorer = self._load_scorer_fn(self._model_spec, **self._scorer_options)
        if scorer.model_id != self._expected_model_id:
            raise ModelSpecError(
                f"worker {os.uname().nodename} loaded {scorer.model_id} for {self._model_spec!r}, but the pipeline "
                f"was built for {self._expected_model_id}; deploy the same weights to launcher and workers"
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
