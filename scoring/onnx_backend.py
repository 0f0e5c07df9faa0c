"""The network's forward pass through ONNX Runtime on a CPU: exported once per weights, cached, verified at load.

On 2 cores ONNX Runtime runs EfficientNet-Lite0 about twice as fast as torch's channels-last chunks
(``bench/scoring.py`` prints both). The export has two outputs, the head's input (features) and output (logits),
which are all the scores read, so a scorer on either backend computes its scores alike from them.

The export is cached per model id (weights sha256), head, input size and export format: next to the model file
when its folder is writable, else in ``$GRADWATCH_CACHE_DIR`` (default ``~/.cache/gradwatch``), written to a
temporary file and renamed, so workers exporting at once never read half a file. A cached export is run on a
fixed probe batch at load and compared with torch's forward pass: one that does not load or does not agree
(truncated, written by another architecture with the same weights) is exported again.

ONNX Runtime gets the intra-op threads torch had, and torch keeps one for the scores and image properties
(:func:`network_threads`): the process's cores go to the network either way.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from scoring.errors import GradwatchError
from scoring.models import LoadedModel, head_name, model_file
from scoring.settings import ScoringSettings

_LOG = logging.getLogger(__name__)

# Bump when what is exported changes (its outputs, their order, the opset): older cached files then go unused.
EXPORT_FORMAT = 1
# 17 is the newest opset torch's TorchScript exporter writes every op of these models in, and ONNX Runtime 1.17+
# runs it.
OPSET = 17
INPUT = "images"
OUTPUTS = ("features", "logits")
# A cached or fresh export must give torch's head outputs within this, relative to their largest magnitude, on the
# probe batch. Measured: 8e-6 (features) and 5e-6 (logits) on EfficientNet-Lite0, so 1e-4 passes every sound
# export and fails any other graph.
PROBE_TOLERANCE = 1e-4
PROBE_IMAGES = 3  # not the export's batch size, so an export that fixed its batch size fails the probe

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BackendUnavailableError(GradwatchError):
    """``backend="onnxruntime"`` cannot run here; the message says why and which ``--backend`` or install fixes it."""


def cache_dir() -> Path:
    """Where exports of packaged or factory-built weights are cached: ``$GRADWATCH_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/gradwatch``, else ``~/.cache/gradwatch``."""
    configured = os.environ.get("GRADWATCH_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradwatch"


def cached_export_path(loaded: LoadedModel, spec: str) -> Path:
    """Where the export of this model is cached: beside the model file when its folder is writable, else in
    :func:`cache_dir`. The name holds the model id and a digest of everything else the graph depends on."""
    key = f"{loaded.weights_sha256}|{head_name(loaded)}|{loaded.preprocessing.crop}|{OPSET}|{EXPORT_FORMAT}"
    name = f"{loaded.model_id}.{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx"
    beside = model_file(spec)
    if beside is not None and beside.is_file() and os.access(beside.resolve().parent, os.W_OK):
        return beside.resolve().parent / name
    return cache_dir() / "onnx" / name


def select_forward(loaded: LoadedModel, settings: ScoringSettings, device: torch.device) -> tuple[str, Forward]:
    """The backend that runs the network and its forward pass, (features, logits) of a batch.

    ``auto`` takes ONNX Runtime where it can run (a CPU, fp32, no torch.compile, onnxruntime installed, the model
    exports) and torch otherwise, saying why once per process; ``onnxruntime`` where it cannot run is an error.

    Raises:
        BackendUnavailableError: ``backend="onnxruntime"`` and it cannot run here.
    """
    if settings.backend == "torch":
        return "torch", loaded.forward_to_head
    reason = _why_not_onnxruntime(settings, device)
    if reason is None:
        try:
            forward = OnnxRuntimeForward.load(loaded, settings.model)
        except BackendUnavailableError as error:
            reason = str(error)
        else:
            _hand_cores_to_onnxruntime()
            return "onnxruntime", forward
    if settings.backend == "onnxruntime":
        raise BackendUnavailableError(
            f"--backend onnxruntime cannot score {loaded.model_id} here: {reason}; fix that, or pass --backend auto "
            "(which falls back to torch) or --backend torch"
        )
    # Expected on a GPU, in half precision or compiled: not a warning there.
    expected = device.type != "cpu" or settings.precision != "fp32" or settings.compile
    _log_once(
        logging.INFO if expected else logging.WARNING, f"{loaded.model_id} runs on torch, not onnxruntime: {reason}"
    )
    return "torch", loaded.forward_to_head


def _why_not_onnxruntime(settings: ScoringSettings, device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the device is {device}, and gradwatch runs onnxruntime's CPU execution provider only"
    # Half precision and torch.compile are torch's: ONNX Runtime's CPU provider has no autocast, and an fp16
    # export would round otherwise than the fp32 fallback checks expect.
    if settings.precision != "fp32":
        return f"--precision {settings.precision} runs under torch's autocast"
    if settings.compile:
        return "--compile compiles the torch network"
    try:
        import onnxruntime  # noqa: F401
    except ImportError as error:
        return f"onnxruntime does not import ({error}); install it with pip install 'gradwatch[onnx]'"
    return None


class OnnxRuntimeForward:
    """(features, logits) of a batch through an ONNX Runtime session. Thread-safe, as ``InferenceSession.run`` is."""

    def __init__(self, model_bytes: bytes, loaded: LoadedModel, *, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads wait for work at full speed: on a worker whose decoding threads share the cores (and on a
        # busy 2-core machine: 34 against 18 images/s), they take the cycles the next chunk needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self._input_shape = (3, loaded.preprocessing.crop, loaded.preprocessing.crop)
        self._model_id = loaded.model_id
        self._torch_forward = loaded.forward_to_head

    @classmethod
    def load(cls, loaded: LoadedModel, spec: str) -> OnnxRuntimeForward:
        """The cached export of ``loaded`` (``spec`` names its file), or a fresh one, cached, either checked
        against torch on a probe batch.

        Raises:
            BackendUnavailableError: the model does not export, or its export does not agree with torch.
        """
        threads = network_threads()
        path = cached_export_path(loaded, spec)
        probe = _probe_batch(loaded)
        try:
            with torch.inference_mode():
                expected = loaded.forward_to_head(probe)
        # A model torch cannot run at its own input size (a program exported for another one, a head that runs
        # twice) is left to the torch path, which says what is wrong with it when it scores.
        except Exception as error:
            raise BackendUnavailableError(
                f"torch's forward pass fails on a probe batch {tuple(probe.shape)} ({type(error).__name__}: {error})"
            ) from error
        if path.is_file():
            try:
                forward = cls(path.read_bytes(), loaded, threads=threads)
                forward._check(probe, expected)
                _log_once(logging.INFO, f"{loaded.model_id} runs on onnxruntime, from {path}")
                return forward
            # Whatever makes a cached file unusable (truncated, another graph, a newer onnxruntime's format), a
            # fresh export replaces it.
            except Exception as error:
                _LOG.warning(
                    "cached export %s of %s is unusable (%s); exporting it again", path, loaded.model_id, error
                )
        model_bytes = _export(loaded, probe)
        forward = cls(model_bytes, loaded, threads=threads)
        try:
            forward._check(probe, expected)
        except ValueError as error:
            raise BackendUnavailableError(str(error)) from error
        _write_atomically(path, model_bytes)
        _log_once(logging.INFO, f"{loaded.model_id} runs on onnxruntime, exported to {path}")
        return forward

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(batch.shape[1:]) != self._input_shape:
            # The export is traced and checked at the model's input size only: shapes a trace froze (a padding
            # computed in Python) would be wrong at another, so torch, exact at any size, runs those.
            _log_once(
                logging.INFO,
                f"{self._model_id}: batches of {tuple(batch.shape[1:])}, not the preprocessing's {self._input_shape}, "
                "run on torch",
            )
            return self._torch_forward(batch)
        # NCHW: a channels-last tensor's memory is NHWC, which the exported graph does not read.
        images = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        features, logits = self._session.run(list(OUTPUTS), {INPUT: images})
        return torch.from_numpy(features), torch.from_numpy(logits)

    def _check(self, probe: torch.Tensor, expected: tuple[torch.Tensor, torch.Tensor]) -> None:
        for name, got, want in zip(OUTPUTS, self(probe), expected, strict=True):
            if got.shape != want.shape:
                raise ValueError(f"its {name} are {tuple(got.shape)} where torch's are {tuple(want.shape)}")
            scale = float(want.abs().max()) or 1.0
            difference = float((got - want.to(got.dtype)).abs().max()) / scale
            if not difference <= PROBE_TOLERANCE:
                raise ValueError(
                    f"its {name} differ from torch's by {difference:.1e} of their scale on a probe batch, more than "
                    f"{PROBE_TOLERANCE:.0e}: the model does not export faithfully"
                )


def _probe_batch(loaded: LoadedModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    crop = loaded.preprocessing.crop
    return torch.randn(PROBE_IMAGES, 3, crop, crop, generator=generator)


class _HeadOutputs(torch.nn.Module):
    """The network as one module whose outputs are the head's input and output, for the exporter to trace."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.network = loaded.module  # registered, so its parameters become the graph's initializers
        self._forward_to_head = loaded.forward_to_head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_to_head(images)


def _export(loaded: LoadedModel, probe: torch.Tensor) -> bytes:
    try:
        import onnx  # noqa: F401  # the TorchScript exporter writes its graph through it
    except ImportError as error:
        raise BackendUnavailableError(
            f"exporting needs the onnx package ({error}); install it with pip install 'gradwatch[onnx]'"
        ) from error
    buffer = io.BytesIO()
    batch = {0: "images"}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter's notes on constant folding and tracing say nothing an operator can act on;
            # the probe check decides whether the export is sound.
            warnings.simplefilter("ignore")
            # dynamo=False: the TorchScript exporter needs only onnx, traces the head's capture hook as it runs, and
            # exports EfficientNet-Lite0 in about 10 s; the dynamo exporter would add onnxscript.
            torch.onnx.export(
                _HeadOutputs(loaded).eval(),
                (probe[:2],),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_axes={INPUT: batch, **{name: batch for name in OUTPUTS}},
            )
    except Exception as error:  # the exporter raises many types on an op or a control flow it cannot trace
        raise BackendUnavailableError(f"the model does not export to ONNX ({type(error).__name__}: {error})") from error
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it: a reader sees the old file or the new
    one, never part of one. A folder that cannot be written leaves the export in memory only, with a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        _log_once(logging.WARNING, f"cannot cache the onnx export in {path.parent} ({error}); each load exports again")
        return
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes it private; an export beside a shared model file is for every worker that reads the model.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        _log_once(logging.WARNING, f"cannot cache the onnx export at {path} ({error}); each load exports again")


# What torch's intra-op thread count was before an onnxruntime scorer lowered it to 1; None until one did.
_TORCH_THREADS_BEFORE: int | None = None


def network_threads() -> int:
    """The threads the network runs on: torch's intra-op count, or, where an onnxruntime scorer in this process took
    them from torch (torch then has 1), the count torch had (cpu_threads of a Beam worker, say)."""
    threads = torch.get_num_threads()
    if threads == 1 and _TORCH_THREADS_BEFORE is not None:
        return _TORCH_THREADS_BEFORE
    return threads


def _hand_cores_to_onnxruntime() -> None:
    """Leave torch one intra-op thread for the scores and image properties.

    torch's OpenMP threads spin on the cores after each op, where ONNX Runtime's threads then wait for them: on 2
    cores the closed form ran at 14 images/s against 34 for ONNX Runtime's bare forward pass, and at 31 with torch on
    one thread (27 with torch's threads waiting passively, which only the environment can set, before torch loads).
    """
    global _TORCH_THREADS_BEFORE
    _TORCH_THREADS_BEFORE = network_threads()
    if torch.get_num_threads() != 1:
        _log_once(logging.INFO, f"onnxruntime runs the network on {_TORCH_THREADS_BEFORE} threads; torch keeps 1")
        torch.set_num_threads(1)


_LOGGED: set[str] = set()
_LOGGED_LOCK = threading.Lock()


def _log_once(level: int, message: str) -> None:
    """Log a message once per process: a worker loads its model per pipeline, the monitor once per window."""
    with _LOGGED_LOCK:
        if message in _LOGGED:
            return
        _LOGGED.add(message)
    _LOG.log(level, message)
