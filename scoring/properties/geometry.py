"""Size and shape of the image as sent, upright: a new camera, a crop or a thumbnail step upstream shows here."""

from __future__ import annotations

import torch

from scoring.properties import NativeImage, register_property


@register_property("width", kind="native")
def width(image: NativeImage) -> torch.Tensor:
    return torch.tensor(float(image.width), device=image.crop.device)


@register_property("height", kind="native")
def height(image: NativeImage) -> torch.Tensor:
    return torch.tensor(float(image.height), device=image.crop.device)


@register_property("aspect_ratio", kind="native")
def aspect_ratio(image: NativeImage) -> torch.Tensor:
    """Width over height."""
    return torch.tensor(image.width / image.height, device=image.crop.device)
