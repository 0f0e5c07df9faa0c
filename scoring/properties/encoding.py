"""What the encoder left: its JPEG quality setting, and 8x8 blockiness at the image's own resolution.

A new encoder setting or a recompression step upstream changes both; resizing to the model's input would blur the
8x8 grid away, so they are measured on the decoded image before it is resized.
"""

from __future__ import annotations

import math

import torch

from scoring.properties import NativeImage, grey, register_property

# One grey level: keeps the ratio finite and near 1 on flat images.
_FLOOR = 1 / 255


@register_property("jpeg_quality", kind="native")
def jpeg_quality(image: NativeImage) -> float:
    """The encoder quality read from the JPEG's luminance table (1 to 100); NaN for other formats."""
    return float(image.header.quality) if image.header is not None and image.header.quality is not None else math.nan


@register_property("blockiness", kind="native")
def blockiness(image: NativeImage) -> float | torch.Tensor:
    """Mean luma step across 8x8 block edges over the mean step elsewhere (Wang, Bovik & Evans, 2000), on the
    native crop: about 1 for a camera's photo, above it where coarse JPEG quantisation left blocks; NaN below two
    blocks a side. A JPEG decoded at a reduced scale is read on its blocks as decoded (4 or 2 pixels a side, each
    still decoded on its own); at 1/8 a block is one pixel, with no step inside it: NaN."""
    rows, columns = image.crop.shape[:2]
    block = image.block
    if block < 2 or rows < 2 * block or columns < 2 * block:
        return math.nan
    luma = grey(image.crop)  # the same arithmetic on a NumPy array (host) and a torch tensor (device)
    across_columns = abs(luma[:, 1:] - luma[:, :-1])  # step j is between pixels j and j + 1
    across_rows = abs(luma[1:] - luma[:-1])
    at_edges = (across_columns[:, block - 1 :: block], across_rows[block - 1 :: block])
    edges, edge_count = sum(steps.sum() for steps in at_edges), sum(_count(steps) for steps in at_edges)
    inside = across_columns.sum() + across_rows.sum() - edges
    inside_count = _count(across_columns) + _count(across_rows) - edge_count
    return (edges / edge_count + _FLOOR) / (inside / inside_count + _FLOOR)


def _count(steps) -> int:
    return steps.shape[0] * steps.shape[1]
