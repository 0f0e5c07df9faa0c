"""Sample images that ship inside scikit-image, so the demo needs no download."""

from __future__ import annotations

from pathlib import Path

# Photographs the default ImageNet model classifies with confidence (MSP 0.5-0.9 under augmentation).
IN_SCOPE = ("chelsea.png", "coffee.png", "motorcycle_left.png", "camera.png", "clock_motion.png")
# Scenes it was not trained for, on which its MSP stays below 0.15: text, textures, microscopy, sky, coins.
OUT_OF_SCOPE = (
    "page.png",
    "grass.png",
    "gravel.png",
    "cell.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "color.png",
)


def sample_data_dir() -> Path:
    """scikit-image's folder of bundled sample images."""
    try:
        import skimage
    except ImportError as error:
        raise RuntimeError("the sample images come with scikit-image: pip install 'gradwatch[demo]'") from error
    return Path(skimage.__file__).parent / "data"
