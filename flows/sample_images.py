"""Sample photographs that ship inside scikit-image, so the demo needs no download.

Usage: ``python -m flows.sample_images DEST`` writes them to DEST, with two files production also
sends — a truncated upload and a non-image — to show that those are rejected with a reason.
"""

from __future__ import annotations

import shutil
import sys
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
    try:
        import skimage
    except ImportError as error:
        raise RuntimeError("the sample images come with scikit-image: pip install 'gradwatch[demo]'") from error
    return Path(skimage.__file__).parent / "data"


def write_sample_images(dest: Path) -> list[Path]:
    """Copy the sample images to ``dest`` and add one truncated and one non-image file.

    Returns:
        The files written.
    """
    source = sample_data_dir()
    dest.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copy(source / name, dest / name)) for name in (*IN_SCOPE, *OUT_OF_SCOPE)]
    rocket = (source / "rocket.jpg").read_bytes()
    truncated = dest / "upload-cut-short.jpg"
    truncated.write_bytes(rocket[: len(rocket) // 3])
    not_an_image = dest / "camera-7-status.txt"
    not_an_image.write_text("camera 7: lens heater fault\n")
    return [*written, truncated, not_an_image]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.sample_images DEST")
    for path in write_sample_images(Path(sys.argv[1])):
        print(path)
