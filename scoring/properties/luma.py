"""Brightness and contrast: the mean and standard deviation of the model input's luma (a dark lens, fog, glare)."""

from __future__ import annotations

import torch

from scoring.properties import InputPixels, register_property


@register_property("brightness", kind="input")
def brightness(pixels: InputPixels) -> torch.Tensor:
    """Mean luma in [0, 1]."""
    return pixels.moments("luma")[0]


@register_property("contrast", kind="input")
def contrast(pixels: InputPixels) -> torch.Tensor:
    """Standard deviation of luma (RMS contrast) in [0, 0.5]."""
    return pixels.moments("luma")[1].sqrt()
