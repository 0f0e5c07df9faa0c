"""Decoding what production sends into RGB images, and the model's own preprocessing.

Every failure to decode becomes an :class:`~scoring.errors.ImageDecodeError` for that one input, so a
caller scoring a batch records a rejection and goes on.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from scoring.errors import ImageDecodeError

ImageInput = Image.Image | bytes | str | os.PathLike | BinaryIO

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Interpolations torch can resample with antialiasing, as Pillow does when it shrinks.
TORCH_INTERPOLATIONS = ("bilinear", "bicubic")

# Leading bytes of the accepted formats, to tell a broken image from something that is not one.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
)

# A JPEG's blocks are 8x8 pixels at full scale.
_JPEG_BLOCK = 8
_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How one decoded image becomes the model's input tensor, and the limits on what is decoded."""

    # Shorter side before cropping: 224/256 = 0.875 is the crop ratio ImageNet models are evaluated at.
    resize: int = 256
    # Square crop from the centre, the resolution the model was trained at.
    crop: int = 224
    # Per-channel mean/std on [0, 1] pixels; torchvision's ImageNet statistics unless the model says else.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # torchvision's default for ImageNet weights; TF-trained models (EfficientNet-Lite) want bicubic.
    interpolation: str = "bilinear"
    # 64 MP covers 48 MP phone cameras; larger is a decompression bomb or a mistake (192 MB decoded).
    max_pixels: int = 64_000_000
    # 100 MB of compressed bytes is far above any camera JPEG and bounds a worker's memory per image.
    max_bytes: int = 100_000_000
    # Transparent pixels are composited on white, as a browser shows a product photo on a page.
    alpha_background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {sorted(_INTERPOLATIONS)}; pick one of them"
            )
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be positive and at most resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean {self.mean} and std {self.std} need 3 values each, std positive")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) once the shorter side is ``resize``, neither below ``crop``."""
        scale = self.resize / min(width, height)
        return max(self.crop, round(width * scale)), max(self.crop, round(height * scale))

    def fits(self, width: int, height: int) -> bool:
        """Whether the image stays within ``max_pixels`` once resized: a 1 x 65535 strip would not."""
        resized_width, resized_height = self.resized_size(width, height)
        return resized_width * resized_height <= self.max_pixels

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Resize the shorter side, crop the centre and normalise an RGB image.

        Returns:
            float32 tensor of shape (3, crop, crop).
        """
        resized_size = self.resized_size(*image.size)
        image = image.resize(resized_size, _INTERPOLATIONS[self.interpolation])
        left = (resized_size[0] - self.crop) // 2
        top = (resized_size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def pixels_to_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """:meth:`to_tensor` in torch, on the pixels' own device: for images decoded on a GPU.

        Resamples as Pillow does: antialiased, the horizontal pass first, each pass rounded to 8 bits. Pillow
        works in fixed point, so values near a half may round the other way: the result is within one grey
        level of Pillow's, at about 1 pixel in 10,000 on ImageNet photos (1 in 8 at an exact 2x reduction).

        Args:
            pixels: uint8 RGB tensor (3, H, W).

        Returns:
            float32 tensor (3, crop, crop) on the same device.
        """
        self._check_torch_interpolation()
        image = pixels[None].float()
        height, width = image.shape[-2:]
        resized_width, resized_height = self.resized_size(width, height)
        top, left = (resized_height - self.crop) // 2, (resized_width - self.crop) // 2
        image = self._resample(image, (height, resized_width))
        # Each column resamples on its own in the vertical pass: only the cropped ones are needed.
        image = self._resample(image[..., left : left + self.crop], (resized_height, self.crop))
        scale, shift = _normalisation(tuple(self.mean), tuple(self.std), pixels.device)
        return torch.addcmul(shift, image[0, :, top : top + self.crop, :], scale)

    def frames_to_tensor(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`pixels_to_tensor` for frames of any sizes at once, in a fixed number of kernels.

        On a GPU the threads that decode JPEGs spend their time launching kernels: one at a time, each frame
        costs about ten. Here each resampling pass is one batched matrix product with the antialiasing filter's
        weights (the same weights torch's interpolate uses), built on the device for every frame together, with
        frames padded to the largest and the padding weighted zero. Sums run in another order than
        interpolate's, so a value near a half may round the other way: within one grey level of
        :meth:`pixels_to_tensor`, at fewer than 1 value in 10,000 on photos, 1 in 200 on images whose sums land
        exactly on halves (a photo enlarged by copying pixels 3x4, then reduced 6x). On a CPU the products cost
        more than they save: resample one at a time there.

        Args:
            frames: uint8 RGB tensors (3, H, W), of any sizes, on one device.

        Returns:
            float32 tensor (len(frames), 3, crop, crop) on that device.
        """
        self._check_torch_interpolation()
        device = frames[0].device
        heights = [frame.shape[-2] for frame in frames]
        widths = [frame.shape[-1] for frame in frames]
        # Left as it was, not zeroed: the weights of padding are exactly zero and any byte times zero is zero.
        count, padded_height, padded_width = len(frames), max(heights), max(widths)
        padded = frames[0].new_empty((count, 3, padded_height, padded_width))
        for slot, frame, height, width in zip(padded, frames, heights, widths, strict=True):
            slot[:, :height, :width].copy_(frame)
        resized = [self.resized_size(width, height) for width, height in zip(widths, heights, strict=True)]
        # Both passes' weights in one go: per frame its width's row, then per frame its height's.
        weights = _resampling_weights(
            sizes=[*widths, *heights],
            resized=[width for width, _ in resized] + [height for _, height in resized],
            crop=self.crop,
            padded=max(padded_height, padded_width),
            interpolation=self.interpolation,
            device=device,
        )
        horizontal, vertical = weights[:count, :, :padded_width], weights[count:, :, :padded_height]
        # Horizontal pass first, as Pillow: (crop x W) @ (W x 3H) gives each frame's columns, channels and rows
        # side by side, which the vertical pass takes as (3 crop x H) @ (H x crop) without a copy.
        columns = torch.bmm(horizontal, padded.float().view(count, 3 * padded_height, padded_width).transpose(1, 2))
        columns = columns.round_().clamp_(0, 255).view(count, self.crop * 3, padded_height)
        resampled = torch.bmm(columns, vertical.transpose(1, 2)).round_().clamp_(0, 255)
        # (frame, column, channel, row) to (frame, channel, row, column), normalised into a contiguous tensor.
        resampled = resampled.view(count, self.crop, 3, self.crop).permute(0, 2, 3, 1)
        scale, shift = _normalisation(tuple(self.mean), tuple(self.std), device)
        normalised = torch.empty((count, 3, self.crop, self.crop), device=device)
        return torch.addcmul(shift, resampled, scale, out=normalised)

    def _check_torch_interpolation(self) -> None:
        if self.interpolation not in TORCH_INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} has no antialiased torch equivalent; use one of "
                f"{TORCH_INTERPOLATIONS} or decode on the host"
            )

    def _resample(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        image = torch.nn.functional.interpolate(image, size=size, mode=self.interpolation, antialias=True)
        return image.round_().clamp_(0, 255)


def _resampling_weights(
    *, sizes: list[int], resized: list[int], crop: int, padded: int, interpolation: str, device: torch.device
) -> torch.Tensor:
    """Per axis, the (crop x padded) matrix taking its pixels to the centre ``crop`` of the resampled axis.

    Follows torch's antialiased interpolate (aten/src/ATen/native/cuda/UpSample.cuh, the upsample_antialias
    helpers), which follows Pillow: a filter stretched by the reduction factor, cut to the taps torch uses and
    normalised to sum 1, in float32 as torch computes it for float32 images.

    Args:
        sizes: each axis's length before resampling.
        resized: each axis's length once resampled, before cropping.
    """
    # One small copy from pageable memory, which does not wait on the stream.
    table = torch.from_numpy(_axis_table(sizes, resized, crop, interpolation)).to(device, non_blocking=True)
    size, scale, support, inverse_scale, first = table[:, :, None].unbind(1)
    centre = (torch.arange(crop, device=device) + first) * scale
    # static_cast<int> in torch: truncation toward zero, then clipped to the input.
    lowest = (centre - support + 0.5).long().clamp_(min=0).float()
    beyond = torch.minimum((centre + support + 0.5).long(), size.long()).float()
    # Taps and bounds as float32, exact below 2**24; every step after the first works in place, as the (axes x
    # crop x padded) products are the largest tensors here. The same operations in the same order as torch's:
    # (tap - lowest) + (lowest - centre) + 0.5, times the inverse scale.
    taps = torch.arange(padded, device=device, dtype=torch.float32)
    weights = taps - lowest[..., None]
    outside = (weights < 0).logical_or_(taps >= beyond[..., None])
    weights.add_((lowest - centre)[..., None]).add_(0.5).mul_(inverse_scale[..., None]).abs_()
    weights = _FILTERS[interpolation](weights).masked_fill_(outside, 0)
    return weights.div_(weights.sum(-1, keepdim=True))


def _axis_table(sizes: list[int], resized: list[int], crop: int, interpolation: str) -> np.ndarray:
    """Per axis: length, scale, the filter's reach, its inverse stretch and the first kept output's centre.

    Computed on the host, in float32 as torch does, so the device builds every weight in a few kernels.
    """
    size = np.asarray(sizes, np.float32)
    scale = size / np.asarray(resized, np.float32)
    half_taps = np.float32(1.0 if interpolation == "bilinear" else 2.0)  # torch's interp_size / 2
    stretched = scale >= 1
    support = np.where(stretched, half_taps * scale, half_taps)
    inverse_scale = np.where(stretched, np.float32(1) / scale, np.float32(1))
    first = (np.asarray(resized) - crop) // 2 + 0.5
    return np.stack([size, scale, support, inverse_scale, first], 1).astype(np.float32)


def _triangle(distance: torch.Tensor) -> torch.Tensor:
    """1 - distance, not below 0; overwrites ``distance``."""
    return distance.neg_().add_(1).clamp_(min=0)


def _keys_cubic(distance: torch.Tensor) -> torch.Tensor:
    """Keys' cubic with a = -0.5, the one torch's antialiased bicubic and Pillow use; overwrites ``distance``."""
    a = -0.5
    far = (distance - 5).mul_(distance).add_(8).mul_(distance).sub_(4).mul_(a).masked_fill_(distance >= 2, 0)
    near = distance < 1
    cubic = (distance * (a + 2)).sub_(a + 3).mul_(distance).mul_(distance).add_(1)
    return torch.where(near, cubic, far, out=distance)


_FILTERS = {"bilinear": _triangle, "bicubic": _keys_cubic}


@functools.cache
def _normalisation(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift that take 8-bit pixels to (pixel / 255 - mean) / std in one multiply-add.

    Made once per device: copying them from the host for every image would wait on the GPU each time.
    """
    std_tensor = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    mean_tensor = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    scale, shift = 1 / (255 * std_tensor), -mean_tensor / std_tensor
    return scale.float().to(device), shift.float().to(device)


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image, and what decoding it at a reduced scale changed."""

    image: Image.Image
    # The image as sent, upright, whatever scale it was decoded at: what its native size properties report.
    width: int
    height: int
    # Pixels a side of the JPEG's 8x8 blocks in ``image``: 8 at full scale, 4, 2 or 1 at 1/2, 1/4 or 1/8.
    block: int = 8


def decode_image(
    data: ImageInput, *, source: str | None = None, limits: Preprocessing = Preprocessing()
) -> Image.Image:
    """Decode one input into an upright RGB image.

    Args:
        data: a PIL image, encoded bytes, a path, or a binary file object.
        source: the name to report in errors (a URI, say); defaults to the path, or ``"<bytes>"``.
        limits: whose ``max_pixels``/``max_bytes``/``alpha_background`` apply.

    Returns:
        An RGB image with EXIF orientation applied; first frame of animations and multi-page files.

    Raises:
        ImageDecodeError: the input is empty, too large, not an image, truncated, corrupt or unreadable.
    """
    return decode_for_model(data, source=source, limits=limits).image


def decode_for_model(
    data: ImageInput, *, source: str | None = None, limits: Preprocessing = Preprocessing(), scaled: bool = False
) -> DecodedImage:
    """:func:`decode_image` for the model's preprocessing: with ``scaled``, a JPEG at least twice the resize target
    a side is decoded at the smallest of libjpeg's 1/2, 1/4 and 1/8 scales that still covers that target.

    libjpeg then computes fewer outputs per 8x8 block (a 1080p frame at 1/4 costs a fraction of its full decode)
    and the resize shrinks far less; the pixels differ from a full decode's, so a calibration records the choice.
    Limits are checked on the size as sent, so a bomb is refused before any decoding, at any scale.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    if source is None:
        source = os.fspath(data) if isinstance(data, str | os.PathLike) else "<bytes>"
    image = data if isinstance(data, Image.Image) else _open(data, source, limits)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageDecodeError(source, "too_large", f"{width}x{height} pixels exceeds max_pixels={limits.max_pixels}")
    if not limits.fits(width, height):
        resized = "x".join(str(side) for side in limits.resized_size(width, height))
        raise ImageDecodeError(
            source,
            "too_large",
            f"{width}x{height} pixels would be {resized} once its shorter side is {limits.resize}, past "
            f"max_pixels={limits.max_pixels}: an aspect ratio this extreme is not a photograph",
        )
    try:
        reduction = _draft(image, limits) if scaled else 1
        image.load()
        # Orientations 5 to 8 turn the image a quarter (EXIF's, else XMP's, as exif_transpose reads them).
        turned = image.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS
        image = ImageOps.exif_transpose(image)
        upright_width, upright_height = (height, width) if turned else (width, height)
        return DecodedImage(
            _to_rgb(image, limits.alpha_background), upright_width, upright_height, _JPEG_BLOCK // reduction
        )
    # Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError and struct.error on hostile
    # bytes; whatever one image's bytes do, it must become that image's rejection, not a batch crash.
    except Exception as error:
        reason = "truncated" if "truncated" in str(error) else "corrupt"
        raise ImageDecodeError(source, reason, f"{type(error).__name__}: {error}") from error


def _draft(image: Image.Image, limits: Preprocessing) -> int:
    """Have libjpeg decode ``image`` at the smallest scale still covering its resized size; the reduction (1 to 8).

    Pillow's draft picks the largest of 8, 4, 2 dividing both sides' ratios to the request, so the decoded image
    is at least the resize's output on each side and the resize still only shrinks. Sides are as stored: the
    resized size of a quarter-turned image is the same, turned. An MPO's pictures are left at full scale, as
    drafting them is untested here.
    """
    if image.format != "JPEG":
        return 1
    stored_width = image.width
    drafted = image.draft(None, limits.resized_size(*image.size))
    return 1 if drafted is None else round(stored_width / drafted[1][2])


def _open(data: bytes | str | os.PathLike | BinaryIO, source: str, limits: Preprocessing) -> Image.Image:
    if isinstance(data, str | os.PathLike):
        try:
            with open(data, "rb") as file:
                data = file.read(limits.max_bytes + 1)
        except OSError as error:
            raise ImageDecodeError(source, "unreadable", f"{type(error).__name__}: {error}") from error
    elif not isinstance(data, bytes):
        data = data.read(limits.max_bytes + 1)
    if not data:
        raise ImageDecodeError(source, "empty", "0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(source, "too_large", f"more than max_bytes={limits.max_bytes} bytes")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        claimed = next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)
        if claimed is not None:
            raise ImageDecodeError(source, "corrupt", f"starts like {claimed} but its header is unreadable") from error
        raise ImageDecodeError(source, "not_an_image", "no known image format recognised") from error
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(source, "too_large", str(error)) from error
    except Exception as error:  # a recognised format whose header is broken
        raise ImageDecodeError(source, "corrupt", f"{type(error).__name__}: {error}") from error


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's convert() clips 16-bit values at 255; scale the full 16-bit range instead.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
