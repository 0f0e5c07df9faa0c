"""ImageNet-C style corruptions (Hendrycks & Dietterich, ICLR 2019), in PIL and numpy.

They simulate what breaks in production — sensor noise, a lens out of focus, heavy compression, exposure,
haze — to inject drift into evaluations and the demo feed. Severity runs from 1 (mild) to 5 (severe),
with parameters in the spirit of ImageNet-C's (not bit-identical to them).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Corruption = Callable[[Image.Image, int, np.random.Generator], Image.Image]


def _check(severity: int) -> int:
    if severity not in range(1, 6):
        raise ValueError(f"severity must be 1..5, got {severity}")
    return severity - 1


def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[_check(severity)]
    pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
    return Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8))


def defocus_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    radius = (1.5, 2.5, 4.0, 6.0, 9.0)[_check(severity)] * min(image.size) / 224
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def jpeg_compression(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    quality = (25, 18, 15, 10, 7)[_check(severity)]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def brightness(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    lift = (0.1, 0.2, 0.3, 0.4, 0.5)[_check(severity)]
    pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    return Image.fromarray((np.clip(pixels + lift, 0, 1) * 255).astype(np.uint8))


def fog(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """A smooth random haze: low-resolution noise upsampled, added, then contrast squeezed."""
    strength, smoothness = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[_check(severity)]
    rgb = image.convert("RGB")
    width, height = rgb.size
    haze = np.zeros((height, width), np.float32)
    for octave in range(1, 6):  # a few octaves of value noise make a plasma-like field
        cells = rng.random((2**octave + 1, 2**octave + 1)).astype(np.float32)
        layer = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC))
        haze += layer / smoothness**octave
    haze = (haze - haze.min()) / (np.ptp(haze) or 1.0)
    pixels = np.asarray(rgb, np.float32) / 255.0
    peak = pixels.max()
    fogged = (pixels + strength * 0.3 * haze[..., None]) * peak / (peak + strength * 0.3)
    return Image.fromarray((np.clip(fogged, 0, 1) * 255).astype(np.uint8))


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "defocus_blur": defocus_blur,
    "jpeg_compression": jpeg_compression,
    "brightness": brightness,
    "fog": fog,
}
