from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = "tests.scoring.tiny_models:build"


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_image(path: Path, seed: int, *, mtime: dt.datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """Good images in two sub-folders beside the odd files production sends, all at 13:xx UTC."""
    root = tmp_path / "feed"
    when = utc("2026-11-26T13:20:00Z")
    for index in range(4):
        write_image(root / "cam-1" / f"{index}.png", index, mtime=when)
    for index in range(3):
        write_image(root / "cam-2" / "deep" / f"{index}.jpg", 10 + index, mtime=when)
    write_image(root / "top.png", 99, mtime=when)
    odd = {
        "cam-1/empty.jpg": b"",
        "cam-2/truncated.png": (root / "top.png").read_bytes()[:120],
        "notes.txt": b"not an image",
    }
    for name, data in odd.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (when.timestamp(), when.timestamp()))
    (root / ".hidden.png").write_bytes((root / "top.png").read_bytes())
    return root
