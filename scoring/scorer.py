"""The scorer: images in, every registered per-image score out, from one batched forward pass."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from scoring.decoding import DeviceJpegDecoder
from scoring.errors import ImageDecodeError, ModelSpecError, UnusableReferenceError
from scoring.features import FEATURES, FeatureProjection, fit_projection
from scoring.images import DecodedImage, ImageInput, Preprocessing, decode_for_model
from scoring.jpeg import read_jpeg_header
from scoring.models import LoadedModel, load_model
from scoring.onnx_backend import network_threads, select_forward
from scoring.properties import NativeImage, input_properties, native_properties, registered_properties
from scoring.scores import HeadOutputs, computable_scores, registered_scores
from scoring.settings import ScoringSettings

_LOG = logging.getLogger(__name__)

# Autocast dtypes of the reduced precisions. On EfficientNet-Lite0 over 1000 ImageNet samples (CPU autocast),
# fp16 moves GradNorm by at most 4.7e-3 relative (median 6.5e-4) and bf16 by up to 4.7e-2 (median 5.5e-3):
# bf16 keeps 8 bits of mantissa to fp16's 11, and tensor cores run both at the same rate.
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# On a CPU a forward pass over a few images at a time keeps activations in cache: EfficientNet-Lite0 on
# 2 cores scores ~155 images/s in chunks of 4 against ~38 in one batch of 64 (bench/scoring.py --chunk).
CPU_FORWARD_CHUNK = 4
# The input properties of a CPU batch are measured this many images at a time, apart from the forward chunks:
# each property is a few passes of a few small tensor calls, whose dispatch dominates small chunks. Through the
# properties' threads (EfficientNet-Lite0's inputs, 2 cores, interleaved turns) they cost 16.8% of the bare
# ONNX Runtime forward pass in chunks of 1, 7.6% in chunks of 4, 6.0% of 8, 5.5% of 16 and 6.2% of 32, where a
# chunk's planes no longer stay in cache. Since the opponent planes are mixed and then centred in place, score()
# runs at 0.96-0.99 of the bare pass in chunks of 16 (bench/scoring.py, two runs of 24 and 40 turns).
CPU_PROPERTIES_CHUNK = 16
# Encoded images are scored this many at a time on an accelerator, so the device works on one group while
# the host decodes the next: small enough to start the device early, large enough to fill it.
ACCELERATOR_SCORE_CHUNK = 128

# JPEGs decoded on the device per call: 32 full-size 12 MP photos are about 1.2 GB of device memory.
DEVICE_DECODE_CHUNK = 32
# Threads that decode chunks on the device, each on a stream of its own, and chunks decoded ahead of scoring:
# header checks and resizing overlap (torchvision runs one nvJPEG decode at a time), and at most 4 chunks of
# full-size frames are on the device at once (about 5 GB of 12 MP photos).
DEVICE_DECODE_THREADS = 4
DEVICE_DECODE_AHEAD = 2 * DEVICE_DECODE_THREADS
# Beside an accelerator, host decoding threads default to the cores this process may use, up to this many: each
# holds a decoded full-size image, and past it a worker's memory grows faster than its throughput.
MAX_DECODE_THREADS = 32

ImageScores = dict[str, float | int]
# A decoded image: its model input (3, crop, crop) and its native properties (registry order), on one device.
Decoded = tuple[torch.Tensor, torch.Tensor]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else is passed to torch.

    A GPU without an index gets the current one's: each thread has its own current GPU, and decoding threads
    must work on the scorer's.
    """
    resolved = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else torch.device(device)
    )
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


class Scorer:
    """Scores batches of images with one model.

    Thread-safe for concurrent :meth:`score` calls on one instance, so a worker process can share one
    model between its threads.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: ScoringSettings = ScoringSettings(),
        *,
        fitted_scores: Mapping[str, Any] | None = None,
        forward_chunk: int | None = None,
        decode_threads: int | None = None,
    ) -> None:
        """Put the model on its device, channels-last, optionally compile it, and pick the backend that runs it.

        Args:
            loaded: from :func:`scoring.models.load_model` (``settings.model`` names it).
            settings: device, precision, decoder, temperature and compile, as :class:`ScoringSettings` checks them.
                ``fp16``/``bf16`` run the network under autocast; a chunk in which any features or logits
                overflow half precision is scored again in fp32, and the scores are always computed in float64
                from the head's outputs. ``decoder="device"`` decodes JPEGs in :meth:`score_encoded` with
                torchvision on the scorer's device (nvJPEG on a GPU); other formats and any image it fails on go
                to the host path. ``backend`` picks torch or ONNX Runtime (:func:`scoring.onnx_backend.select_forward`;
                the export is cached and checked against torch on first use).
            fitted_scores: what the scores that learn from a reference learned there (:meth:`fit_scores`), by
                name, and the feature projection (under ``"features"``); a fitted score without its state is not
                computed, and without a projection no features are kept.
            forward_chunk: most images per forward pass, whatever the batch size; default
                ``CPU_FORWARD_CHUNK`` on a CPU and the whole batch on an accelerator.
            decode_threads: host decoding threads of :meth:`score_encoded`; default: the cores this process
                may use (at most ``MAX_DECODE_THREADS``) beside an accelerator, the network's intra-op thread count
                on a CPU (decoding and the network share it; on onnxruntime torch is left one thread, see
                :mod:`scoring.onnx_backend`).
        """
        if forward_chunk is not None and forward_chunk < 1:
            raise ValueError(f"forward_chunk must be at least 1, got {forward_chunk}")
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1, got {decode_threads}")
        self._loaded = loaded
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.forward_chunk = forward_chunk or (CPU_FORWARD_CHUNK if self.device.type == "cpu" else None)
        # Channels-last convolutions are about twice as fast on CPU (oneDNN) and on tensor cores.
        loaded.module.to(self.device, memory_format=torch.channels_last)
        if settings.compile:
            if isinstance(loaded.module, torch.jit.ScriptModule):
                raise ModelSpecError(
                    f"{loaded.model_id} is a TorchScript model, which torch.compile cannot compile; "
                    "load the eager model ('module.path:factory') or score without compile"
                )
            # In place, so the head's capture hook stays on the module that runs.
            loaded.module.compile()
        self._backend, self._forward_to_head = select_forward(loaded, settings, self.device)
        # ONNX Runtime reads NCHW: a channels-last batch would be copied back to it chunk by chunk.
        self._memory_format = torch.channels_last if self._backend == "torch" else torch.contiguous_format
        self._fitted_scores = dict(fitted_scores or {})
        self._scores = computable_scores(self._fitted_scores)
        self._projection = (
            FeatureProjection.from_state(self._fitted_scores[FEATURES], self.device)
            if FEATURES in self._fitted_scores
            else None
        )
        # The head's W and b in float64, for the scores that read them (SCALE rescales through b, ViM fits on W).
        self._head_parameters = tuple(
            parameter.detach().to(self.device, torch.float64) if isinstance(parameter, torch.Tensor) else None
            for parameter in (getattr(loaded.head, "weight", None), getattr(loaded.head, "bias", None))
        )
        self._device_decoder = (
            DeviceJpegDecoder(loaded.preprocessing, self.device) if settings.decoder == "device" else None
        )
        if decode_threads is None:
            usable_cores = min(len(os.sched_getaffinity(0)), MAX_DECODE_THREADS)
            decode_threads = network_threads() if self.device.type == "cpu" else usable_cores
        self._decode_threads = decode_threads
        self._decode_pool: ThreadPoolExecutor | None = None
        self._device_pool: ThreadPoolExecutor | None = None
        self._properties_threads: ThreadPoolExecutor | None = None
        self._decode_pool_lock = threading.Lock()

    @property
    def model(self) -> nn.Module:
        return self._loaded.module

    @property
    def head(self) -> nn.Module:
        return self._loaded.head

    @property
    def backend(self) -> str:
        """What runs the network: ``"torch"`` or ``"onnxruntime"`` (what ``settings.backend="auto"`` chose)."""
        return self._backend

    @property
    def model_id(self) -> str:
        """``name@<first 12 hex of the weights' sha256>``: thresholds are valid for these weights only."""
        return self._loaded.model_id

    @property
    def preprocessing(self) -> Preprocessing:
        return self._loaded.preprocessing

    @property
    def score_names(self) -> list[str]:
        return list(self._scores)

    @property
    def keeps_features(self) -> bool:
        """Whether every result carries the projected features (``"features"``): when a projection was fitted."""
        return self._projection is not None

    @property
    def property_names(self) -> list[str]:
        """The image properties every result carries beside the scores (:mod:`scoring.properties`)."""
        return list(registered_properties())

    def preprocess(self, image: ImageInput, *, source: str | None = None) -> torch.Tensor:
        """Decode one input and apply the model's own resize, crop and normalisation.

        Args:
            image: a PIL image, encoded bytes, a path or a binary file object.
            source: name for error messages (a URI, say).

        Returns:
            float32 tensor (3, H, W), ready to be stacked into a batch.

        Raises:
            ImageDecodeError: for that one input (empty, too large, not an image, truncated, corrupt).
        """
        return self.preprocessing.to_tensor(self._decode(image, source).image)

    def score(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Score a batch with one forward pass.

        Args:
            batch: (N, 3, H, W) float tensor from :meth:`preprocess`, on any device.

        Returns:
            1-D arrays of length N: every registered score as float64 (``gradnorm``, ``energy``, ``msp``,
            ``maxlogit``, ``feature_l1``, ``output_l1``, ...), every image property (the native ones, which need
            the encoded image, NaN), and ``pred``, the argmax class, as int64; with a fitted projection also
            ``features``, (N, dimensions) float64.
        """
        return self._collect(self._launch(batch))

    def score_batches(self, batches: Iterable[torch.Tensor]) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`score` for each batch in turn, the next one queued on the device before this one's scores are read.

        On a GPU the host then copies the next batch while the device computes this one, instead of each
        waiting for the other: ResNet-50 in bf16 on an H200 scores 12,300 images/s so, 10,500 through score().
        So a batch is still in use when the previous one's scores arrive: refill a batch's memory only once
        the scores of the batch after it have been read.
        """
        queued: _Queued | None = None
        for batch in batches:
            following = self._launch(batch)
            if queued is not None:
                yield self._collect(queued)
            queued = following
        if queued is not None:
            yield self._collect(queued)

    def score_encoded(self, images: Sequence[bytes], *, sources: Sequence[str]) -> list[ImageScores | ImageDecodeError]:
        """Decode, preprocess and score encoded images, the device working while the host decodes.

        Threads decode ahead (Pillow releases the GIL; with ``decoder="device"`` JPEGs are decoded on the
        device itself, each thread on a stream of its own) while each group of images runs on the device, and
        one group's scores are read only once the next group is queued, so neither side waits for the other.

        Args:
            images: encoded bytes, one per image.
            sources: their names (URIs), for rejection messages.

        Returns:
            Per image, in order: its scores and properties (as :meth:`score` gives them, one value each, the
            native properties measured), or the :class:`ImageDecodeError` that rejects it; a bad image never fails
            the others.
        """
        if len(images) != len(sources):
            raise ValueError(f"{len(images)} images but {len(sources)} sources; pass one source per image")
        results: list[ImageScores | ImageDecodeError | None] = [None] * len(images)
        groups = self._decoded_groups(images, sources, results)
        queued: tuple[list[int], _Queued] | None = None
        for indices, decoded in groups:
            natives = self._stack([native for _, native in decoded])
            following = indices, self._launch(self._stack([tensor for tensor, _ in decoded]), natives)
            if queued is not None:
                self._store(*queued, results)
            queued = following
        if queued is not None:
            self._store(*queued, results)
        return results  # type: ignore[return-value]  # every slot is filled above

    def fit_scores(self, images: Sequence[bytes], *, sources: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Fit every registered score that learns from a reference, and the feature projection, on these images'
        head outputs.

        Images that do not decode are left out (the pipeline rejects them, with their reason, when it scores them).

        Raises:
            UnusableReferenceError: none of them decodes.

        Returns:
            Each fitted score's state by name, and the projection's under ``"features"``, for ``fitted_scores``.
            One that cannot be fitted here (too few images, a head without the weights it reads) is left out,
            with a warning naming why.
        """
        learning = {name: score for name, score in registered_scores().items() if score.fit is not None}
        features, logits = [], []
        rejected: list[ImageScores | ImageDecodeError | None] = [None] * len(images)
        for _, decoded in self._decoded_groups(images, sources, rejected):
            batch = self._stack([tensor for tensor, _ in decoded]).to(self.device, memory_format=self._memory_format)
            with torch.inference_mode():
                for chunk in batch.split(self.forward_chunk or len(batch)):
                    chunk_features, chunk_logits = self._forward(chunk)
                    if not (torch.isfinite(chunk_features).all() and torch.isfinite(chunk_logits).all()):
                        chunk_features, chunk_logits = self._loaded.forward_to_head(chunk)
                    features.append(chunk_features.double().cpu())
                    logits.append(chunk_logits.double().cpu())
        if not features:
            raise UnusableReferenceError(
                f"none of the {len(images)} images to fit scores on decodes; see why with gradwatch score"
            )
        weight, bias = (parameter.cpu() if parameter is not None else None for parameter in self._head_parameters)
        head = HeadOutputs(torch.cat(features), torch.cat(logits), self.settings.temperature, weight, bias)
        fits = {name: score.fit for name, score in learning.items()}
        fits[FEATURES] = lambda head: fit_projection(head.features)
        states = {}
        for name, fit in fits.items():
            try:
                states[name] = fit(head)
            except ValueError as error:  # this model or reference cannot fit it: the others still decide
                _LOG.warning("%s is not computed nor tested: %s", name, error)
        return states

    def _launch(self, batch: torch.Tensor, natives: torch.Tensor | None = None) -> _Queued:
        """Queue the forward pass, the scores, the properties and their copy to the host, without waiting for the
        device. ``natives`` are the batch's native properties, (N, K), when its images were decoded here."""
        if batch.ndim != 4 or len(batch) == 0:
            raise ValueError(
                f"batch must be (N, C, H, W) with N >= 1, got shape {tuple(batch.shape)}; stack preprocess() outputs"
            )
        if self.device.type == "cuda" and batch.device.type == "cpu":
            # Page-locked memory lets the copy run asynchronously, overlapping the next batch's host work.
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True, memory_format=self._memory_format)
        with torch.inference_mode():
            chunks = batch.split(self.forward_chunk or len(batch))
            heads = [self._forward(chunk) for chunk in chunks]
            # After the network, which then has every core, the properties' threads and this one share the chunks,
            # the scores computed here meanwhile. On 2 cores, in two runs of 40 back-to-back turns,
            # EfficientNet-Lite0's score() ran at 0.93-0.94 of the bare forward pass so, against 0.91-0.93 with
            # every chunk measured on this thread; measured beside the network (0.93-0.95, the same within the
            # noise), they slowed ONNX Runtime's threads by about as much as they measured.
            measured_chunks = batch.split(CPU_PROPERTIES_CHUNK) if self.device.type == "cpu" else chunks
            measuring = None
            if self._backend == "onnxruntime":
                pool = self._properties_pool()
                measuring = [pool.submit(self._chunk_properties, chunk) for chunk in measured_chunks]
            try:
                head_columns = self._columns(heads)
                properties = self._input_properties(measured_chunks, measuring)
            except BaseException:
                # A batch that fails leaves none of its chunks queued ahead of the next batch's.
                for future in measuring or ():
                    future.cancel()
                raise
            finite = None
            if self.settings.precision != "fp32":
                # fp16 tops out at 65504: an activation past it is inf, and that image's scores would be nan.
                # Checked once the device is done, so the check costs no wait.
                finite = torch.stack([torch.isfinite(f).all() & torch.isfinite(z).all() for f, z in heads])
                finite = finite.to("cpu", non_blocking=True)
            native_names = registered_properties("native")
            if natives is None:
                natives = torch.full((len(batch), len(native_names)), torch.nan, device=batch.device)
            properties.update(zip(native_names, natives.unbind(dim=1), strict=True))
            properties = {name: column.double() for name, column in properties.items()}
            # Non-blocking copies to the host land in page-locked memory; _collect waits for them.
            columns = {
                name: column.to("cpu", non_blocking=True) for name, column in {**head_columns, **properties}.items()
            }
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event(blocking=True)  # the waiting thread sleeps, leaving the core to the decoders
            done.record(torch.cuda.current_stream(self.device))
        return _Queued(chunks, heads, finite, columns, done)

    def _input_properties(
        self, chunks: tuple[torch.Tensor, ...], measuring: list[Future] | None = None
    ) -> dict[str, torch.Tensor]:
        """The input properties of a batch's chunks, a chunk at a time: on a CPU its pixels then stay in cache
        through every property's passes. ``measuring`` holds each chunk's submitted to the properties'
        threads: those they have not started are measured here."""
        if measuring is None:
            measured = [self._chunk_properties(chunk) for chunk in chunks]
        else:
            # From the last chunk back, while the properties' threads go on from the first.
            stolen = {
                index: self._chunk_properties(chunks[index])
                for index in reversed(range(len(chunks)))
                if measuring[index].cancel()
            }
            measured = [stolen[index] if index in stolen else measuring[index].result() for index in range(len(chunks))]
        return {name: torch.cat([values[name] for values in measured]) for name in measured[0]}

    def _chunk_properties(self, chunk: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():  # per thread: this may run on the properties' own
            # Measured on the normalised chunk, whose normalisation the properties fold into their arithmetic.
            return input_properties(chunk, scale=tuple(self.preprocessing.std), shift=tuple(self.preprocessing.mean))

    def _collect(self, queued: _Queued) -> dict[str, np.ndarray]:
        if queued.done is not None:
            queued.done.synchronize()
        if queued.finite is not None and not bool(queued.finite.all()):
            with torch.inference_mode():
                heads = [
                    head if ok else self._loaded.forward_to_head(chunk)
                    for chunk, head, ok in zip(queued.chunks, queued.heads, queued.finite.tolist(), strict=True)
                ]
                rescored = {name: column.cpu().numpy() for name, column in self._columns(heads).items()}
            # The properties do not depend on the network's precision: kept as they were.
            return {**{name: column.numpy().copy() for name, column in queued.columns.items()}, **rescored}
        # Copied out of the page-locked buffers, which go back to the allocator's cache for the next batch.
        return {name: column.numpy().copy() for name, column in queued.columns.items()}

    def _columns(self, heads: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        features = torch.cat([features for features, _ in heads])
        logits = torch.cat([logits for _, logits in heads])
        # float64 for the few N x C operations after the network: they are cheap next to the forward
        # pass, and C·p - 1 near a uniform softmax needs the digits.
        head = HeadOutputs(features.double(), logits.double(), self.settings.temperature, *self._head_parameters)
        columns = {name: score(head, self._fitted_scores) for name, score in self._scores.items()}
        columns["pred"] = logits.argmax(dim=1)
        if self._projection is not None:
            columns[FEATURES] = self._projection(head.features)
        return columns

    def _store(self, indices: list[int], queued: _Queued, results: list[ImageScores | ImageDecodeError | None]) -> None:
        # One list per column: a NumPy scalar per value costs more than the scoring itself at GPU rates.
        columns = {name: column.tolist() for name, column in self._collect(queued).items()}
        for position, index in enumerate(indices):
            results[index] = {name: column[position] for name, column in columns.items()}

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            for tensor in tensors:
                if tensor.device.type == "cuda":
                    # Decoded on another thread's stream: keep its memory from that stream's next allocation
                    # until this stream has read it.
                    tensor.record_stream(stream)
        if any(tensor.device != tensors[0].device for tensor in tensors):
            # Device-decoded images beside host-decoded ones (a PNG, a CMYK JPEG): gather them on the device.
            tensors = [tensor.to(self.device, non_blocking=True) for tensor in tensors]
        return torch.stack(tensors)

    def _decoded_groups(
        self, images: Sequence[bytes], sources: Sequence[str], results: list[ImageScores | ImageDecodeError | None]
    ) -> Iterator[tuple[list[int], list[Decoded]]]:
        """Decoded images in groups to score together; rejections go straight into ``results``."""
        group_size = self.forward_chunk or ACCELERATOR_SCORE_CHUNK
        indices: list[int] = []
        tensors: list[Decoded] = []
        for index, decoded in self._decode_all(images, sources):
            if isinstance(decoded, ImageDecodeError):
                results[index] = decoded
                continue
            indices.append(index)
            tensors.append(decoded)
            if len(tensors) == group_size:
                yield indices, tensors
                indices, tensors = [], []
        if tensors:
            yield indices, tensors

    def _decode_all(
        self, images: Sequence[bytes], sources: Sequence[str]
    ) -> Iterator[tuple[int, Decoded | ImageDecodeError]]:
        pool = self._host_decode_pool()
        if self._device_decoder is None:
            on_host = [
                pool.submit(self._decode_on_host, data, source) for data, source in zip(images, sources, strict=True)
            ]
            for index, future in enumerate(on_host):
                yield index, future.result()
            return
        # The device decoder takes chunks in threads of its own (header checks, Huffman decoding and kernel
        # launches run on the host); a few chunks ahead keep it busy without holding every frame at once.
        chunks = [
            list(range(start, min(start + DEVICE_DECODE_CHUNK, len(images))))
            for start in range(0, len(images), DEVICE_DECODE_CHUNK)
        ]
        device_pool = self._device_decode_pool()
        ahead: collections.deque[tuple[list[int], Future]] = collections.deque()
        on_host: dict[int, Future] = {}
        for chunk in chunks:
            ahead.append((chunk, device_pool.submit(self._device_decoder.decode, [images[i] for i in chunk])))
            if len(ahead) >= DEVICE_DECODE_AHEAD:
                yield from self._device_decoded(*ahead.popleft(), images, sources, on_host)
        while ahead:
            yield from self._device_decoded(*ahead.popleft(), images, sources, on_host)
        for index, future in on_host.items():
            yield index, future.result()

    def _device_decoded(
        self,
        chunk: list[int],
        future: Future,
        images: Sequence[bytes],
        sources: Sequence[str],
        on_host: dict[int, Future],
    ) -> Iterator[tuple[int, Decoded]]:
        try:
            decoded = future.result()
        except Exception as error:  # whatever breaks a chunk on the device, the host decodes its images
            _LOG.warning("device decoding failed on %d images (%r); the host decodes them", len(chunk), error)
            decoded = [None] * len(chunk)
        for index, outcome in zip(chunk, decoded, strict=True):
            if outcome is None:  # declined or failed on the device: the host decodes it or says why not
                on_host[index] = self._host_decode_pool().submit(self._decode_on_host, images[index], sources[index])
            else:
                yield index, outcome

    def _decode_on_host(self, data: bytes, source: str) -> Decoded | ImageDecodeError:
        try:
            decoded = self._decode(data, source)
            # Sizes as sent, and blocks as decoded: a reduced-scale decode shrinks both the frame and its blocks.
            native = native_properties(
                dataclasses.replace(
                    NativeImage.of(decoded.image, read_jpeg_header(data)),
                    width=decoded.width,
                    height=decoded.height,
                    block=decoded.block,
                )
            )
            return self.preprocessing.to_tensor(decoded.image), native
        except ImageDecodeError as error:
            return error
        # Whatever one image does in a decoding thread must reject that image, not fail its batch.
        except MemoryError as error:
            return ImageDecodeError(source, "too_large", f"MemoryError while preprocessing: {error}")
        except Exception as error:
            return ImageDecodeError(source, "corrupt", f"{type(error).__name__} while preprocessing: {error}")

    def _decode(self, image: ImageInput, source: str | None) -> DecodedImage:
        return decode_for_model(
            image, source=source, limits=self.preprocessing, scaled=self.settings.scaled_jpeg_decode
        )

    def _host_decode_pool(self) -> ThreadPoolExecutor:
        # Made on first use, so a scorer that never decodes holds no threads.
        with self._decode_pool_lock:
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="gradwatch-decode")
            return self._decode_pool

    def _properties_pool(self) -> ThreadPoolExecutor:
        with self._decode_pool_lock:
            if self._properties_threads is None:
                # The cores ONNX Runtime had, this thread being one of them.
                self._properties_threads = ThreadPoolExecutor(
                    max(network_threads() - 1, 1), thread_name_prefix="gradwatch-properties"
                )
            return self._properties_threads

    def _device_decode_pool(self) -> ThreadPoolExecutor:
        with self._decode_pool_lock:
            if self._device_pool is None:
                self._device_pool = ThreadPoolExecutor(
                    DEVICE_DECODE_THREADS, thread_name_prefix="gradwatch-device-decode"
                )
            return self._device_pool

    def _forward(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.settings.precision == "fp32":
            return self._forward_to_head(chunk)
        with torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.settings.precision]):
            return self._loaded.forward_to_head(chunk)


@dataclass(frozen=True)
class _Queued:
    """A batch whose forward pass, scores and copy to the host are queued on the device."""

    chunks: tuple[torch.Tensor, ...]  # kept to score a chunk again in fp32 when half precision overflowed
    heads: list[tuple[torch.Tensor, torch.Tensor]]
    finite: torch.Tensor | None  # per chunk, on the host once done; None in fp32
    columns: dict[str, torch.Tensor]  # on the host once done
    done: torch.cuda.Event | None  # None on a CPU, where nothing is asynchronous


def load_scorer(
    settings: ScoringSettings | str = ScoringSettings(),
    *,
    head: str | None = None,
    weights: str | os.PathLike | None = None,
    preprocessing: Preprocessing | None = None,
    fitted_scores: Mapping[str, Any] | None = None,
    forward_chunk: int | None = None,
    decode_threads: int | None = None,
    **changes: Any,
) -> Scorer:
    """Load the model the settings name and wrap it in a :class:`Scorer`.

    Args:
        settings: the scoring settings, or just a model spec (``"efficientnet-lite0"``, a TorchScript or
            ``.pt2`` file, ``"module.path:factory"``, ``"torchvision:NAME"``, ``"timm:NAME"``, with
            ``?head=...&weights=...`` options; see :mod:`scoring.models`).
        head: dotted name of the final nn.Linear when the last one is not the classifier.
        weights: a state dict file for the architecture.
        preprocessing: replaces the model's own input pipeline.
        fitted_scores: what fitted scores learned on a reference; see :class:`Scorer`.
        forward_chunk: most images per forward pass; see :class:`Scorer`.
        decode_threads: host decoding threads of :meth:`Scorer.score_encoded`.
        changes: :class:`ScoringSettings` fields to replace, e.g. ``device="cpu"``, ``precision="fp16"``.

    Returns:
        A ready scorer.
    """
    if isinstance(settings, str):
        settings = ScoringSettings(model=settings)
    settings = dataclasses.replace(settings, **changes)
    loaded = load_model(settings.model, head=head, weights=weights, preprocessing=preprocessing)
    return Scorer(
        loaded, settings, fitted_scores=fitted_scores, forward_chunk=forward_chunk, decode_threads=decode_threads
    )
