"""Image properties: each measures what it says on images whose value is known, in both decoding paths' form."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data as skimage_data

from scoring import Scorer
from scoring.jpeg import read_jpeg_header
from scoring.properties import (
    InputPixels,
    NativeImage,
    input_properties,
    native_crop,
    native_properties,
    registered_properties,
)

PHOTO = Image.fromarray(skimage_data.astronaut())  # 512 x 512


def _input(image: Image.Image) -> InputPixels:
    return InputPixels(torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None])


def _value(name: str, image: Image.Image) -> float:
    return float(registered_properties()[name].compute(_input(image))[0])


def _native(data: bytes) -> dict[str, float]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    values = native_properties(NativeImage.of(image, read_jpeg_header(data)))
    from_tensor = native_properties(NativeImage.of(torch.from_numpy(np.asarray(image).copy()), read_jpeg_header(data)))
    torch.testing.assert_close(values, from_tensor, equal_nan=True)  # the host's way and the device's agree
    return dict(zip(registered_properties("native"), values.tolist(), strict=True))


def _encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_brightness_contrast_and_colourfulness_of_known_images() -> None:
    grey = Image.new("RGB", (64, 48), (128, 128, 128))
    assert _value("brightness", grey) == pytest.approx(128 / 255, abs=1e-6)
    assert _value("contrast", grey) == pytest.approx(0.0, abs=1e-6)
    assert _value("colourfulness", grey) == pytest.approx(0.0, abs=1e-6)
    halves = np.zeros((48, 64, 3), np.uint8)
    halves[:, 32:] = 255  # half black, half white: luma standard deviation 0.5 (n - 1 aside)
    assert _value("contrast", Image.fromarray(halves)) == pytest.approx(0.5, rel=1e-2)
    red = Image.new("RGB", (64, 48), (255, 0, 0))  # rg = 1, yb = 0.5: 0.3 * sqrt(1.25)
    assert _value("colourfulness", red) == pytest.approx(0.3 * math.sqrt(1.25), rel=1e-5)
    assert _value("brightness", PHOTO.point(lambda value: value // 2)) < 0.6 * _value("brightness", PHOTO)


def test_sharpness_falls_with_blur_and_noise_measures_added_noise() -> None:
    blurred = [_value("sharpness", PHOTO.filter(ImageFilter.GaussianBlur(radius))) for radius in (0, 1, 2, 4)]
    assert blurred == sorted(blurred, reverse=True)
    assert blurred[-1] < 0.05 * blurred[0]
    rng = np.random.default_rng(0)
    for sigma in (0.02, 0.05, 0.1):
        flat = np.clip(0.5 + rng.normal(0, sigma, (224, 224, 3)), 0, 1)
        pixels = InputPixels(torch.from_numpy(flat.astype(np.float32)).permute(2, 0, 1)[None])
        # Luma averages three independent channels: its noise is sqrt(0.299² + 0.587² + 0.114²) of theirs.
        expected = sigma * math.sqrt(0.299**2 + 0.587**2 + 0.114**2)
        assert float(registered_properties()["noise"].compute(pixels)[0]) == pytest.approx(expected, rel=0.05)
    assert _value("noise", PHOTO) < 0.02  # a clean photo: its structure barely leaks into the estimate


def test_input_properties_equal_their_definitions() -> None:
    """Variances come from dot products and channel mixes from the normalised values, for speed: they must give
    what the definitions do, on a flat image, a dark one, one whose variance is far below its mean's square, and a
    nearly grey one (channel covariances in float32 had its colourfulness wrong in the fifth digit)."""
    rgb = torch.rand((5, 3, 64, 48), generator=torch.Generator().manual_seed(0))
    rgb[1], rgb[2] = 0.5, 0.0
    rgb[3] = rgb[3] * 0.01 + 0.9
    rgb[4] = rgb[4, :1] + rgb[4] * 1e-3  # nearly grey: channels that differ by far less than they vary
    red, green, blue = rgb.unbind(dim=1)
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    rg_variance, rg_mean = torch.var_mean(red - green, dim=(1, 2))
    yb_variance, yb_mean = torch.var_mean((red + green) / 2 - blue, dim=(1, 2))
    laplacian = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    immerkaer = torch.tensor([[1.0, -2, 1], [-2, 4, -2], [1, -2, 1]]).view(1, 1, 3, 3)
    expected = {
        "brightness": luma.mean(dim=(1, 2)),
        "contrast": luma.std(dim=(1, 2)),
        "colourfulness": torch.sqrt(rg_variance + yb_variance) + 0.3 * torch.sqrt(rg_mean**2 + yb_mean**2),
        "sharpness": torch.nn.functional.conv2d(luma[:, None], laplacian).var(dim=(1, 2, 3)),
        "noise": torch.nn.functional.conv2d(luma[:, None], immerkaer).abs().mean(dim=(1, 2, 3))
        * math.sqrt(math.pi / 2)
        / 6,
    }
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    # As pixels, and as the model reads them, whose normalisation the properties fold into their arithmetic.
    for measured in (input_properties(rgb), input_properties(normalised, scale=std, shift=mean)):
        for name, values in expected.items():
            torch.testing.assert_close(measured[name], values.float(), rtol=1e-4, atol=1e-7, msg=name)
        # Not the root of a rounding below 0.
        assert [float(measured["contrast"][index]) for index in (1, 2)] == [0.0, 0.0]


@pytest.mark.parametrize("size", [(7, 9), (33, 35), (224, 224)])
def test_a_flat_coloured_image_has_exactly_no_contrast_sharpness_noise_or_colour_variance(
    size: tuple[int, int],
) -> None:
    """The planes are mixed from the channels before they are centred: a flat image must mix to planes flat to the
    last bit, at sizes whose pixels do not fill the matrix product's vector lanes too."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    colour = torch.tensor([0.8, 0.3, 0.55])
    normalised = ((colour - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1).expand(2, 3, *size)
    measured = input_properties(normalised.contiguous(), scale=std, shift=mean)
    for name in ("contrast", "sharpness", "noise"):
        assert measured[name].tolist() == [0.0, 0.0], name
    red, green, blue = colour.tolist()
    expected_colourfulness = 0.3 * math.hypot(red - green, (red + green) / 2 - blue)
    assert measured["colourfulness"].tolist() == pytest.approx([expected_colourfulness] * 2, rel=1e-6)


def test_a_property_reading_a_plane_that_is_not_there_is_told_which_are() -> None:
    with pytest.raises(ValueError, match=r"no opponent plane 'saturation'.*'luma', 'red_green', 'yellow_blue'"):
        _input(PHOTO).moments("saturation")


def test_a_batch_that_is_not_rgb_is_told_the_properties_read_rgb() -> None:
    with pytest.raises(ValueError, match=r"3-channel \(RGB\) batches, got 1 channels"):
        InputPixels(torch.rand(2, 1, 16, 16)).moments("luma")


def test_native_properties_read_the_encoding_and_the_size() -> None:
    coarse, fine = _native(_encoded(PHOTO, quality=10)), _native(_encoded(PHOTO, quality=95))
    assert (coarse["jpeg_quality"], fine["jpeg_quality"]) == (10.0, 95.0)
    assert coarse["blockiness"] > 1.5 > 1.1 > fine["blockiness"] > 0.9
    png = _native(_encoded(PHOTO.crop((0, 0, 300, 200)), "PNG"))
    assert math.isnan(png["jpeg_quality"])
    assert (png["width"], png["height"], png["aspect_ratio"]) == (300.0, 200.0, pytest.approx(1.5))
    assert math.isnan(_native(_encoded(Image.new("RGB", (12, 40)), "PNG"))["blockiness"])  # too small to say


@pytest.mark.parametrize(("height", "width"), [(512, 512), (375, 500), (4000, 3000), (40, 1000), (8, 8)])
def test_the_native_crop_is_centred_on_the_8x8_grid(height: int, width: int) -> None:
    top, left, rows, columns = native_crop(height, width)
    assert top % 8 == left % 8 == rows % 8 == columns % 8 == 0
    assert rows == min(height, 256) // 8 * 8
    assert columns == min(width, 256) // 8 * 8
    assert 0 <= top <= top + rows <= height
    assert 0 <= left <= left + columns <= width
    assert abs((top + rows / 2) - height / 2) <= 8
    assert abs((left + columns / 2) - width / 2) <= 8


def test_the_scorer_gives_every_property_with_the_scores(tiny: Scorer) -> None:
    outcomes = tiny.score_encoded([_encoded(PHOTO, quality=30), _encoded(PHOTO, "PNG")], sources=["a.jpg", "b.png"])
    jpeg, png = outcomes
    assert set(tiny.property_names) <= set(jpeg)
    assert jpeg["jpeg_quality"] == 30.0
    assert math.isnan(png["jpeg_quality"])
    assert (jpeg["width"], jpeg["height"]) == (512.0, 512.0)
    assert jpeg["brightness"] == pytest.approx(png["brightness"], abs=0.01)  # the same picture, as the model sees it
    scored = tiny.score(torch.stack([tiny.preprocess(_encoded(PHOTO, "PNG"))]))
    assert scored["brightness"][0] == pytest.approx(png["brightness"], rel=1e-5)
    assert math.isnan(scored["width"][0])  # a batch of tensors has no size as sent to tell
