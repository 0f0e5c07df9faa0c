"""What production sends: every format, mode and odd input either scores or raises ImageDecodeError."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from scoring import ImageDecodeError, Preprocessing, Scorer, decode_image
from scoring.models import EFFICIENTNET_LITE_PREPROCESSING


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _gradient(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], axis=2)).convert(mode)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _transparent_png(mode: str) -> bytes:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 10, 20))
    return _encode(image.convert(mode) if mode != "RGBA" else image, "PNG")


def _sixteen_bit_png(value: int) -> bytes:
    return _encode(Image.fromarray(np.full((10, 12), value, dtype=np.uint16)), "PNG")


ENCODED: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: _encode(_gradient(), "JPEG", quality=90),
    "png": lambda: _encode(_gradient(), "PNG"),
    "webp": lambda: _encode(_gradient(), "WEBP"),
    "bmp": lambda: _encode(_gradient(), "BMP"),
    "gif": _animated_gif,
    "tiff": lambda: _encode(_gradient(), "TIFF", save_all=True, append_images=[_gradient("L")]),
    "mode-L": lambda: _encode(_gradient("L"), "PNG"),
    "mode-LA": lambda: _transparent_png("LA"),
    "mode-P": lambda: _encode(_gradient("P"), "PNG"),
    "mode-P-transparent": lambda: _transparent_png("P"),
    "mode-RGBA": lambda: _transparent_png("RGBA"),
    "mode-CMYK-jpeg": lambda: _encode(_gradient("CMYK"), "JPEG"),
    "mode-CMYK-tiff": lambda: _encode(_gradient("CMYK"), "TIFF"),
    "mode-I;16": lambda: _sixteen_bit_png(65535),
}


@pytest.mark.parametrize("kind", ENCODED)
def test_every_format_and_mode_decodes_to_rgb(kind: str) -> None:
    image = decode_image(ENCODED[kind]())
    assert image.mode == "RGB"
    assert min(image.size) > 0


def test_gif_and_tiff_give_their_first_frame() -> None:
    assert decode_image(_animated_gif()).getpixel((5, 5)) == (255, 0, 0)
    assert decode_image(ENCODED["tiff"]()).size == (64, 48)


def test_transparency_is_composited_on_white() -> None:
    for mode in ("RGBA", "LA", "P"):
        image = decode_image(_transparent_png(mode))
        assert image.getpixel((15, 5)) == (255, 255, 255), mode
        assert image.getpixel((2, 5)) != (255, 255, 255), mode


def test_sixteen_bit_grey_keeps_its_range() -> None:
    assert decode_image(_sixteen_bit_png(65535)).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(_sixteen_bit_png(32896)).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (40, 20), (255, 0, 0))
    upright.paste((0, 0, 255), (20, 0, 40, 20))  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers rotate 90 degrees clockwise to show it
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (20, 40)
    image = decode_image(_encode(stored, "JPEG", exif=exif, quality=95))
    assert image.size == (40, 20)
    assert image.getpixel((5, 10))[0] > 200
    assert image.getpixel((35, 10))[2] > 200


def _truncated_jpeg() -> bytes:
    data = _encode(_gradient(size=(256, 256)), "JPEG")
    return data[: len(data) // 2]


def _noise_png() -> bytes:
    return _encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")


def _corrupt_png() -> bytes:
    data = bytearray(_noise_png())
    data[100] ^= 0xFF  # inside the compressed pixel data
    return bytes(data)


def _garbled_jpeg() -> bytes:
    """Zeroed entropy-coded data: libjpeg decodes garbage pixels without complaint."""
    data = bytearray(_encode(_gradient(size=(128, 128)), "JPEG"))
    data[700:1200] = bytes(500)
    return bytes(data)


def _bomb_png() -> bytes:
    return _encode(Image.new("1", (20_000, 20_000)), "PNG")


ODD: dict[str, tuple[Callable[[], bytes], str]] = {
    "zero-byte": (lambda: b"", "empty"),
    "truncated-jpeg": (_truncated_jpeg, "truncated"),
    "corrupt-png": (_corrupt_png, "corrupt"),
    "text-file": (lambda: b"camera_id,temperature\ncam-7,21.5\n", "not_an_image"),
    "html-error-page": (lambda: b"<html><body>403 Forbidden</body></html>", "not_an_image"),
    "decompression-bomb": (_bomb_png, "too_large"),
    "png-signature-and-header-only": (lambda: _noise_png()[:33], "corrupt"),
    "png-cut-after-header": (lambda: _noise_png()[:60], "truncated"),
    # Within max_pixels, but 256 x 5 million once its shorter side is resized: no photograph, and gigabytes.
    "one-pixel-strip": (lambda: _encode(Image.new("RGB", (1, 20_000)), "PNG"), "too_large"),
}


@pytest.mark.parametrize("kind", ODD)
def test_odd_inputs_raise_the_named_error(kind: str, tmp_path) -> None:
    make, reason = ODD[kind]
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(make())
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(path)
    assert raised.value.reason == reason
    assert str(path) in str(raised.value)
    assert "Fix:" in str(raised.value)


def test_over_large_bytes_are_refused_before_decoding() -> None:
    limits = Preprocessing(max_bytes=1000)
    with pytest.raises(ImageDecodeError, match="max_bytes=1000") as raised:
        decode_image(_noise_png(), source="s3://bucket/big.png", limits=limits)
    assert raised.value.reason == "too_large"
    assert raised.value.source == "s3://bucket/big.png"


def test_missing_file_is_unreadable(tmp_path) -> None:
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(tmp_path / "gone.jpg")
    assert raised.value.reason == "unreadable"


def test_decode_error_survives_pickling() -> None:
    error = ImageDecodeError("s3://b/x.jpg", "corrupt", "broken")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, copy.detail, str(copy)) == (
        "s3://b/x.jpg",
        "corrupt",
        "broken",
        str(error),
    )


@pytest.mark.parametrize("kind", [*ENCODED, "garbled-jpeg"])
def test_scorer_scores_what_decodes(kind: str, efficientnet: Scorer) -> None:
    data = {**ENCODED, "garbled-jpeg": _garbled_jpeg}[kind]()
    scores = efficientnet.score(efficientnet.preprocess(data, source=kind).unsqueeze(0))
    assert all(np.isfinite(scores[name]).all() for name in efficientnet.score_names)


@pytest.mark.parametrize("kind", ODD)
def test_scorer_rejects_what_does_not_decode(kind: str, efficientnet: Scorer) -> None:
    with pytest.raises(ImageDecodeError) as raised:
        efficientnet.preprocess(ODD[kind][0](), source=f"s3://feed/{kind}")
    assert raised.value.source == f"s3://feed/{kind}"


def test_efficientnet_preprocessing_maps_pixels_to_minus_one_one() -> None:
    prep = EFFICIENTNET_LITE_PREPROCESSING
    for value, expected in ((127, 0.0), (255, 128 / 128), (0, -127 / 128)):
        tensor = prep.to_tensor(Image.new("RGB", (300, 200), (value,) * 3))
        assert tensor.shape == (3, 224, 224)
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, torch.full_like(tensor, expected), atol=1e-6, rtol=0)


def test_resize_keeps_aspect_and_crops_the_centre() -> None:
    image = Image.new("RGB", (512, 256), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 128, 256))  # a white band on the left quarter, cropped away
    tensor = Preprocessing(resize=64, crop=32, mean=(0, 0, 0), std=(1, 1, 1)).to_tensor(image)
    assert tensor.shape == (3, 32, 32)
    assert tensor.max() < 0.05


def test_preprocessing_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="cubic-ish")
    with pytest.raises(ValueError, match="crop"):
        Preprocessing(resize=100, crop=224)
