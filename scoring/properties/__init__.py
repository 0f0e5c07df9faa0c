"""Image properties, registered by name: what an image looks like, beside what the model makes of it.

Confidence scores miss covariate shifts that cost accuracy (noise, blur, contrast, JPEG, a new camera); simple
statistics of the images see many of them. Two kinds:

- **input** properties are measured on the model's input, as the model sees it (resized, cropped, before
  normalisation), for a whole batch at once on the scoring device: brightness, contrast, sharpness...
- **native** properties are measured on one decoded image at its own resolution, or read from its header, where
  resizing would erase them: size, aspect ratio, JPEG quality, 8x8 blockiness. A host-decoded image's crop is a
  NumPy array, a device-decoded one's a tensor on the device; a native property's arithmetic serves both (NumPy
  keeps the host's decoding threads off torch's thread pool, which the forward pass is using).

A new property is one new file in this package that calls :func:`register_property`; every module here is imported
with the package. A property that does not apply to an image (the JPEG quality of a PNG) is NaN.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from scoring.jpeg import JpegHeader

PropertyKind = Literal["input", "native"]
Shared = TypeVar("Shared")
# The opponent colour space input properties read, each plane a mix of R, G and B: ITU-R BT.601 luma, as JPEG's
# YCbCr and Pillow's "L" mode weigh them, and Hasler & Süsstrunk's red-green and yellow-blue opponents.
_LUMA = (0.299, 0.587, 0.114)
OPPONENT_PLANES: dict[str, tuple[float, float, float]] = {
    "luma": _LUMA,
    "red_green": (1.0, -1.0, 0.0),
    "yellow_blue": (0.5, 0.5, -1.0),
}
_MIXES = tuple(OPPONENT_PLANES.values())


@dataclass(frozen=True)
class InputPixels:
    """A batch of model inputs, (N, 3, H, W) float32 on the scoring device, whose pixels in [0, 1] are
    ``values * scale + shift`` per channel: a normalised batch with its normalisation's std and mean, or pixels as
    they are (scale 1, shift 0).

    The pixels are not clamped: a batch from the model's preprocessing is in [0, 1] to float rounding. ``values``
    may be the caller's own tensor: read it, never change it in place.

    Properties read the batch through its opponent planes (:data:`OPPONENT_PLANES`): each image's mean and
    variance of a plane (:meth:`moments`) and luma less its mean (:attr:`centred_luma`), all from the normalised
    channels centred and mixed into the three planes at once, the normalisation folded into the mix; what several
    of them read beside is computed once a batch (:meth:`shared`).
    """

    values: torch.Tensor
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def moments(self, plane: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's mean and variance (n - 1 in the denominator) of an opponent plane, on the [0, 1] scale."""
        if plane not in OPPONENT_PLANES:
            raise ValueError(f"no opponent plane {plane!r}: a property reads one of {list(OPPONENT_PLANES)}")
        index = list(OPPONENT_PLANES).index(plane)
        means, variances = self._opponents[1:3]
        return means[:, index], variances[:, index]

    @property
    def centred_luma(self) -> torch.Tensor:
        """(N, H, W): each image's luma less its mean, on the [0, 1] scale. Shared: read it, never change it in
        place."""
        return self._opponents[0][:, 0]

    def shared(self, name: str, compute: Callable[[], Shared]) -> Shared:
        """``compute()``, once per batch under ``name``, for what several properties read (one of luma's
        differences). What it returns is shared: read it, never change it in place."""
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    @cached_property
    def _opponents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(centred planes (N, 3, H, W), means (N, 3), variances (N, 3)) on the [0, 1] scale: each image's
        normalised channels mixed into the planes by one matrix product, the normalisation's scale folded into its
        weights, then each plane centred on its mean in place. Variances come from the centred values, never from
        the channels' covariances, which in float32 had a nearly grey image's colourfulness wrong in the fifth
        digit; a flat image mixes to flat planes, which centre to exactly 0, so its variances are 0. Centring the
        planes the product wrote, not a copy of the channels, saves a pass and an allocation of the batch: on 2
        cores (bench/scoring.py, EfficientNet-Lite0) score() on ONNX Runtime ran at 0.991 and 0.962 of the bare
        forward pass, against 0.929 with the channels centred first on the same host."""
        count, channels, height, width = self.values.shape
        if channels != len(self.scale):
            raise ValueError(f"input properties read 3-channel (RGB) batches, got {channels} channels")
        mixes = torch.tensor(_MIXES, dtype=torch.float64)
        gains = (mixes * torch.tensor(self.scale, dtype=torch.float64)).to(self.values)
        # (3, 3) @ (N, 3, HW): a batched product that reads the channels once and writes the planes once.
        planes = torch.matmul(gains, self.values.reshape(count, channels, height * width))
        plane_means, variances = mean_and_variance(planes.view(count * channels, -1), overwrite=True)
        offsets = (mixes @ torch.tensor(self.shift, dtype=torch.float64)).to(planes)
        return (
            planes.view(count, -1, height, width),
            plane_means.view(count, -1) + offsets,
            variances.view(count, -1),
        )


@dataclass(frozen=True)
class NativeImage:
    """One decoded image as sent, upright: its size, its JPEG header (when it is a JPEG whose header reads), and its
    centre at its own resolution (:func:`native_crop`), as (h, w, 3) uint8: a NumPy array where the host decoded
    it, a tensor on the device that did."""

    width: int
    height: int
    crop: np.ndarray | torch.Tensor
    header: JpegHeader | None
    # Pixels a side of the JPEG's 8x8 blocks in ``crop``: fewer where libjpeg decoded at a reduced scale.
    block: int = 8

    @classmethod
    def of(cls, pixels: torch.Tensor | Image.Image, header: JpegHeader | None) -> NativeImage:
        """From a whole decoded image: (H, W, 3) uint8 on a device, or an RGB Pillow image, of which only the centre
        is copied out."""
        if isinstance(pixels, Image.Image):
            top, left, rows, columns = native_crop(pixels.height, pixels.width)
            return cls(
                pixels.width, pixels.height, np.asarray(pixels.crop((left, top, left + columns, top + rows))), header
            )
        top, left, rows, columns = native_crop(pixels.shape[0], pixels.shape[1])
        return cls(pixels.shape[1], pixels.shape[0], pixels[top : top + rows, left : left + columns], header)


# Native pixels kept a side, centred and on the JPEG's 8x8 grid: 32 blocks a side say as much as the whole of a
# uniformly encoded file, and a 12 MP photo costs what a thumbnail does.
NATIVE_CROP = 256
_BLOCK = 8


def native_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, rows, columns) of the centred crop native properties read, aligned to the 8x8 grid."""
    rows, columns = (min(side, NATIVE_CROP) // _BLOCK * _BLOCK for side in (height, width))
    return (height - rows) // 2 // _BLOCK * _BLOCK, (width - columns) // 2 // _BLOCK * _BLOCK, rows, columns


@dataclass(frozen=True)
class ImageProperty:
    """A named property: ``compute`` maps InputPixels to an (N,) tensor, or a NativeImage to a number (a float,
    or a 0-d tensor on the crop's device)."""

    name: str
    kind: PropertyKind
    compute: Callable[..., Any]


_REGISTRY: dict[str, ImageProperty] = {}


def register_property(name: str, *, kind: PropertyKind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``compute`` as the property ``name`` of the given kind."""

    def add(compute: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"image property {name!r} is registered twice; rename one of them")
        _REGISTRY[name] = ImageProperty(name, kind, compute)
        return compute

    return add


def registered_properties(kind: PropertyKind | None = None) -> dict[str, ImageProperty]:
    """The registered properties (of one kind), in the order they were registered (this package's by module)."""
    return {name: prop for name, prop in _REGISTRY.items() if kind is None or prop.kind == kind}


def input_properties(
    values: torch.Tensor,
    *,
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> dict[str, torch.Tensor]:
    """Every input property of a batch of model inputs, (N, 3, H, W) on its device, whose pixels in [0, 1] are
    ``values * scale + shift`` (a normalised batch with its std and mean; by default pixels as they are)."""
    pixels = InputPixels(values.float(), scale, shift)
    return {name: prop.compute(pixels).float() for name, prop in registered_properties("input").items()}


def native_properties(image: NativeImage) -> torch.Tensor:
    """Every native property of one image, in registry order, as one float32 tensor: on the host for a crop the
    host decoded, on the crop's device otherwise."""
    values = [prop.compute(image) for prop in registered_properties("native").values()]
    if isinstance(image.crop, np.ndarray):
        return torch.tensor([float(value) for value in values], dtype=torch.float32)
    device = image.crop.device
    if not values:
        return torch.empty(0, device=device)
    on_device = [
        value.float().reshape(()) if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=device)
        for value in values
    ]
    return torch.stack(on_device)


def mean_and_variance(values: torch.Tensor, *, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean and variance (n - 1 in the denominator) of an (N, ...) tensor, as ``torch.var_mean`` gives
    them to float rounding: the values centred, then the norm of the deviations, one pass each, where
    ``torch.var`` costs 35 times as much on a CPU and ``torch.linalg.vecdot`` twice (it writes the products out).
    With ``overwrite`` the values are centred in place: a pass and an allocation fewer, for a tensor of one's own."""
    rows = values.reshape(len(values), -1)
    means = _means(rows)
    deviations = rows.sub_(means) if overwrite else rows - means
    variances = torch.linalg.vector_norm(deviations, dim=1).square_().div_(max(rows.shape[1] - 1, 1))
    return means.view(-1), variances


def _means(rows: torch.Tensor) -> torch.Tensor:
    """(N, 1): each row's mean, where one within the sum's rounding (log2(n) epsilons at most) of the row's first
    value is taken as that value: a flat row then centres to exactly 0, not to an ulp, and any other's mean moves
    by less than its rounding. torch.aminmax, which would say a row is flat too, added two thirds to every
    property together on a CPU."""
    means = rows.sum(dim=1, keepdim=True).div_(rows.shape[1])  # a reduction over several dims at once costs 40% more
    first = rows[:, :1]
    rounding = first.abs() * (torch.finfo(rows.dtype).eps * math.log2(max(rows.shape[1], 2)))
    return torch.where((means - first).abs_() <= rounding, first, means)


def grey(pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(H, W, 3) uint8 pixels as (H, W) float32 luma in [0, 1], a NumPy array or a tensor as given."""
    if isinstance(pixels, np.ndarray):
        return (pixels.astype(np.float32) @ np.asarray(_LUMA, np.float32)) / 255.0
    weights = torch.tensor(_LUMA, dtype=torch.float32, device=pixels.device)
    return (pixels.float() @ weights) / 255.0


# Last, because each property module imports from this package.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
