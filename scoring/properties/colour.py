"""Colourfulness (Hasler & Süsstrunk, 2003, https://doi.org/10.1117/12.477378): a colour cast, a failed white
balance, a sensor gone grey."""

from __future__ import annotations

import torch

from scoring.properties import InputPixels, register_property


@register_property("colourfulness", kind="input")
def colourfulness(pixels: InputPixels) -> torch.Tensor:
    """sqrt(var(rg) + var(yb)) + 0.3·sqrt(mean(rg)² + mean(yb)²) of the opponent channels rg = R - G and
    yb = (R + G)/2 - B, on [0, 1] pixels (the paper's 0-255 values are 255 times these)."""
    rg_mean, rg_variance = pixels.moments("red_green")
    yb_mean, yb_variance = pixels.moments("yellow_blue")
    return torch.sqrt(rg_variance + yb_variance) + 0.3 * torch.sqrt(rg_mean**2 + yb_mean**2)
