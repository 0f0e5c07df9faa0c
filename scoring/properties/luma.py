"""Brightness and contrast: the mean and standard deviation of the model input's luma (a dark lens, fog, glare)."""

from __future__ import annotations

import torch

from scoring.properties import InputPixels, mean_and_variance, register_property


@register_property("brightness", kind="input")
def brightness(pixels: InputPixels) -> torch.Tensor:
    """Mean luma in [0, 1]."""
    return _luma_mean_and_variance(pixels)[0]


@register_property("contrast", kind="input")
def contrast(pixels: InputPixels) -> torch.Tensor:
    """Standard deviation of luma (RMS contrast) in [0, 0.5]."""
    return _luma_mean_and_variance(pixels)[1].sqrt()


def _luma_mean_and_variance(pixels: InputPixels) -> tuple[torch.Tensor, torch.Tensor]:
    return pixels.shared("luma_mean_and_variance", lambda: mean_and_variance(pixels.luma))
