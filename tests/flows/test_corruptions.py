from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flows.corruptions import CORRUPTIONS


def _photo() -> Image.Image:
    x = np.linspace(0, 1, 96)
    pixels = np.stack([np.outer(x, x), np.outer(x[::-1], x), np.outer(x, x[::-1])], axis=2)
    checkers = (np.add.outer(np.arange(96) // 4, np.arange(96) // 4) % 2)[..., None]  # edges for blur to soften
    return Image.fromarray((np.clip(0.6 * pixels + 0.3 * checkers, 0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_keep_size_and_grow_with_severity(name: str) -> None:
    image = _photo()
    original = np.asarray(image, np.float32)
    changes = []
    for severity in (1, 5):
        corrupted = CORRUPTIONS[name](image, severity, np.random.default_rng(0))
        assert corrupted.mode == "RGB"
        assert corrupted.size == image.size
        changes.append(np.abs(np.asarray(corrupted, np.float32) - original).mean())
    assert 0 < changes[0] < changes[1]


def test_severity_outside_one_to_five_is_refused() -> None:
    with pytest.raises(ValueError, match="severity"):
        CORRUPTIONS["fog"](_photo(), 6, np.random.default_rng(0))
