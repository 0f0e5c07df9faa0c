"""Size and shape of the image as sent, upright: a new camera, a crop or a thumbnail step upstream shows here."""

from __future__ import annotations

from scoring.properties import NativeImage, register_property


@register_property("width", kind="native")
def width(image: NativeImage) -> float:
    return float(image.width)


@register_property("height", kind="native")
def height(image: NativeImage) -> float:
    return float(image.height)


@register_property("aspect_ratio", kind="native")
def aspect_ratio(image: NativeImage) -> float:
    """Width over height."""
    return image.width / image.height
