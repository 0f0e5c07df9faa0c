"""1080p camera frames made from ../shared/data, for the benchmarks of decoding at a reduced scale.

Each image is enlarged (Lanczos) to cover 1920x1080, cut to it about its centre and saved as a quality-90 JPEG, once:
later runs reuse the folder.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

from bench.common import IMAGE_SUFFIXES

FRAME_SIZE = (1920, 1080)
FRAME_QUALITY = 90


def camera_frame(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        frame = ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), FRAME_SIZE, Image.Resampling.LANCZOS)
    frame.save(target, "JPEG", quality=FRAME_QUALITY)


def camera_frames(folder: Path, cache: Path, count: int | None = None) -> list[Path]:
    """The first ``count`` images of ``folder`` (sorted by name) as 1080p JPEG frames in ``cache``."""
    sources = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)[:count]
    cache.mkdir(parents=True, exist_ok=True)
    targets = [cache / f"{source.stem}.jpg" for source in sources]
    missing = [(source, target) for source, target in zip(sources, targets, strict=True) if not target.exists()]
    if missing:
        with ProcessPoolExecutor() as pool:
            list(pool.map(camera_frame, *zip(*missing, strict=True), chunksize=8))
    return targets
