"""Brightness and contrast: the mean and standard deviation of the model input's luma (a dark lens, fog, glare)."""

from __future__ import annotations

import torch

from scoring.properties import InputPixels, mean_and_variance, register_property


@register_property("brightness", kind="input")
def brightness(pixels: InputPixels) -> torch.Tensor:
    """Mean luma in [0, 1]."""
    return pixels.luma.mean(dim=(1, 2))


@register_property("contrast", kind="input")
def contrast(pixels: InputPixels) -> torch.Tensor:
    """Standard deviation of luma (RMS contrast) in [0, 0.5]."""
    return mean_and_variance(pixels.luma)[1].sqrt()
