"""What the encoder left: its JPEG quality setting, and 8x8 blockiness at the image's own resolution.

A new encoder setting or a recompression step upstream changes both; resizing to the model's input would blur the
8x8 grid away, so they are measured on the decoded image before it is resized.
"""

from __future__ import annotations

import math

import torch

from scoring.properties import NativeImage, grey, register_property

_BLOCK = 8
# One grey level: keeps the ratio finite and near 1 on flat images.
_FLOOR = 1 / 255


@register_property("jpeg_quality", kind="native")
def jpeg_quality(image: NativeImage) -> torch.Tensor:
    """The encoder quality read from the JPEG's luminance table (1 to 100); NaN for other formats."""
    quality = image.header.quality if image.header is not None and image.header.quality is not None else math.nan
    return torch.tensor(float(quality), device=image.crop.device)


@register_property("blockiness", kind="native")
def blockiness(image: NativeImage) -> torch.Tensor:
    """Mean luma step across 8x8 block edges over the mean step elsewhere (Wang, Bovik & Evans, 2000), on the
    native crop: about 1 for a camera's photo, above it where coarse JPEG quantisation left blocks; NaN below 16
    pixels a side."""
    rows, columns = image.crop.shape[:2]
    if rows < 2 * _BLOCK or columns < 2 * _BLOCK:
        return torch.tensor(math.nan, device=image.crop.device)
    luma = grey(image.crop)
    across_columns = (luma[:, 1:] - luma[:, :-1]).abs()  # step j is between pixels j and j + 1
    across_rows = (luma[1:] - luma[:-1]).abs()
    edges = across_columns[:, _BLOCK - 1 :: _BLOCK].sum() + across_rows[_BLOCK - 1 :: _BLOCK].sum()
    edge_count = across_columns[:, _BLOCK - 1 :: _BLOCK].numel() + across_rows[_BLOCK - 1 :: _BLOCK].numel()
    inside = across_columns.sum() + across_rows.sum() - edges
    inside_count = across_columns.numel() + across_rows.numel() - edge_count
    return (edges / edge_count + _FLOOR) / (inside / inside_count + _FLOOR)
