"""The RunInference model handler: batches of decoded images in, per-image scores out.

Beam loads one model per worker process and shares it between the process's threads
(https://beam.apache.org/documentation/ml/about-ml/#use-runinference). With ``large_model`` or
``model_copies`` the model is a proxy in another process, so all work stays inside one
``Scorer.score`` call per batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.records import DecodedImage
from scoring import ModelSpecError, Scorer, load_scorer


class ScorerModelHandler(ModelHandler[DecodedImage, PredictionResult, Scorer]):
    """Scores :class:`DecodedImage` batches with :func:`scoring.load_scorer`.

    Its one job is turning a batch into scores; decoding happens before it and windowing after it.
    """

    def __init__(
        self,
        model_spec: str,
        *,
        expected_model_id: str,
        device: str = "auto",
        temperature: float = 1.0,
        precision: str = "fp32",
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
            precision: ``fp32``, or ``bf16`` autocast of the network (GPU tensor cores).
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
        self._device = device
        self._temperature = temperature
        self._precision = precision
        self._cpu_threads = cpu_threads
        self._load_scorer_fn = load_scorer_fn

    def load_model(self) -> Scorer:
        if self._cpu_threads:
            torch.set_num_threads(self._cpu_threads)
        scorer = self._load_scorer_fn(
            self._model_spec, device=self._device, temperature=self._temperature, precision=self._precision
        )
        if scorer.model_id != self._expected_model_id:
            raise ModelSpecError(
                f"worker {os.uname().nodename} loaded {scorer.model_id} for {self._model_spec!r}, but the pipeline "
                f"was built for {self._expected_model_id}; deploy the same weights to launcher and workers"
            )
        return scorer

    def run_inference(
        self, batch: Sequence[DecodedImage], model: Scorer, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """Score one batch.

        Args:
            batch: decoded images.
            model: the scorer, or its proxy when shared across processes.
            inference_args: unused; scoring takes no per-call arguments.

        Returns:
            One PredictionResult per image: the image, and a dict of its scores (and ``pred``).
        """
        scores = model.score(torch.stack([image.tensor for image in batch]))
        for index, image in enumerate(batch):
            yield PredictionResult(image, {name: column[index].item() for name, column in scores.items()})

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        return sum(image.tensor.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "gradwatch_inference"
