"""Decoding JPEGs at a reduced DCT scale (ScoringSettings.scaled_jpeg_decode): still covering the resize target,
upright, for every colour space, never for other formats, with bad inputs rejected as before, recorded and enforced."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from scoring import ImageDecodeError, Preprocessing, Scorer, ScoringSettings, load_scorer
from scoring.images import decode_for_model, decode_image

# The default model's: shorter side to 256, centre crop 224.
PREPROCESSING = Preprocessing(resize=256, crop=224, interpolation="bicubic")


def _scene(width: int, height: int) -> np.ndarray:
    """A smooth, asymmetric scene: gradients and slow waves, different along each axis, so a turn or flip shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * x / width
    green = 255 * y / height
    blue = 127.5 + 100 * np.sin(2 * np.pi * x / width * 3) * np.cos(2 * np.pi * y / height * 2)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def _jpeg(array: np.ndarray, mode: str = "RGB", quality: int = 90, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def _grey_levels_apart(scaled: Image.Image, full: Image.Image) -> float:
    """Mean absolute difference, in grey levels, of two decodes of one image compared at the smaller's size."""
    shrunk = full.resize(scaled.size, Image.Resampling.BOX)
    return float(np.abs(np.asarray(scaled, np.float64) - np.asarray(shrunk, np.float64)).mean())


@pytest.mark.parametrize(
    ("size", "decoded", "block"),
    [
        ((1920, 1080), (480, 270), 2),  # a 1080p frame: 1/4, as 1080 / 256 is 4.2
        ((3840, 2160), (480, 270), 1),  # 4K: 1/8
        ((1000, 700), (500, 350), 4),  # 1/2: 700 / 256 is 2.7, too little for 1/4
        ((1080, 1920), (270, 480), 2),  # portrait, stored so
        ((2560, 600), (1280, 300), 4),  # the long side does not limit the scale, the short one does
    ],
)
def test_a_large_jpeg_decodes_at_the_smallest_scale_still_covering_the_resize(
    size: tuple[int, int], decoded: tuple[int, int], block: int
) -> None:
    data = _jpeg(_scene(*size))
    result = decode_for_model(data, limits=PREPROCESSING, scaled=True)
    assert result.image.size == decoded
    assert (result.width, result.height, result.block) == (*size, block)
    # The resize still only shrinks: the decoded image covers its resized size on both sides.
    resized = PREPROCESSING.resized_size(*size)
    assert result.image.width >= resized[0]
    assert result.image.height >= resized[1]
    assert PREPROCESSING.to_tensor(result.image).shape == (3, 224, 224)


@pytest.mark.parametrize("size", [(511, 600), (300, 200), (1000, 511)])
def test_a_jpeg_under_twice_the_target_a_side_decodes_at_full_size(size: tuple[int, int]) -> None:
    result = decode_for_model(_jpeg(_scene(*size)), limits=PREPROCESSING, scaled=True)
    assert (result.image.size, result.block) == (size, 8)


def test_a_larger_resize_target_asks_for_less_reduction() -> None:
    limits = Preprocessing(resize=512, crop=448)
    assert decode_for_model(_jpeg(_scene(1920, 1080)), limits=limits, scaled=True).image.size == (960, 540)


def test_scaled_decoding_is_off_unless_asked() -> None:
    data = _jpeg(_scene(1920, 1080))
    assert decode_for_model(data, limits=PREPROCESSING).image.size == (1920, 1080)
    assert decode_image(data, limits=PREPROCESSING).size == (1920, 1080)
    assert ScoringSettings().scaled_jpeg_decode is False


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_jpeg_is_turned_upright_at_any_scale(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_scene(1920, 1080), exif=exif)
    full = decode_for_model(data, limits=PREPROCESSING)
    scaled = decode_for_model(data, limits=PREPROCESSING, scaled=True)
    turned = orientation in (6, 8)
    assert scaled.image.size == ((270, 480) if turned else (480, 270))
    # The size as sent, upright, as a full decode reports it.
    assert (scaled.width, scaled.height) == (full.width, full.height) == full.image.size
    assert _grey_levels_apart(scaled.image, full.image) < 2


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_decode_scaled_to_rgb(mode: str) -> None:
    data = _jpeg(_scene(1920, 1080), mode)
    full = decode_for_model(data, limits=PREPROCESSING).image
    scaled = decode_for_model(data, limits=PREPROCESSING, scaled=True).image
    assert (scaled.mode, scaled.size) == ("RGB", (480, 270))
    assert _grey_levels_apart(scaled, full) < 2


def test_a_progressive_jpeg_decodes_scaled() -> None:
    data = _jpeg(_scene(1920, 1080), progressive=True)
    full = decode_for_model(data, limits=PREPROCESSING).image
    scaled = decode_for_model(data, limits=PREPROCESSING, scaled=True).image
    assert scaled.size == (480, 270)
    assert _grey_levels_apart(scaled, full) < 2


def test_a_png_is_decoded_as_it_always_was() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_scene(1920, 1080)).save(buffer, "PNG")
    full = decode_for_model(buffer.getvalue(), limits=PREPROCESSING)
    scaled = decode_for_model(buffer.getvalue(), limits=PREPROCESSING, scaled=True)
    assert (scaled.image.size, scaled.block) == ((1920, 1080), 8)
    assert np.array_equal(np.asarray(scaled.image), np.asarray(full.image))


def _claiming(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its frame header claiming another size (the bytes after it unchanged)."""
    patched = bytearray(data)
    frame = patched.index(b"\xff\xc0")  # baseline start of frame: length (2), precision (1), height (2), width (2)
    patched[frame + 5 : frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(patched)


@pytest.mark.parametrize(
    ("make", "reason", "detail"),
    [
        (lambda: _jpeg(_scene(1920, 1080))[:60_000], "truncated", "truncated"),
        # Pillow refuses this many pixels as a decompression bomb before anything is decoded.
        (lambda: _claiming(_jpeg(_scene(64, 64)), 60_000, 60_000), "too_large", "decompression bomb"),
        # Below Pillow's bomb limit but past max_pixels: 1/8 of it would fit, so the limit is read before drafting.
        (lambda: _claiming(_jpeg(_scene(64, 64)), 9_000, 9_000), "too_large", "max_pixels"),
    ],
)
def test_hostile_jpegs_are_rejected_with_their_reason_as_before(make, reason: str, detail: str) -> None:
    data = make()
    for scaled in (False, True):
        with pytest.raises(ImageDecodeError, match=detail) as raised:
            decode_for_model(data, source="s3://feed/cam-7.jpg", limits=PREPROCESSING, scaled=scaled)
        assert raised.value.reason == reason
        assert raised.value.source == "s3://feed/cam-7.jpg"


@pytest.fixture(scope="module")
def tiny_scaled() -> Scorer:
    return load_scorer("tests.scoring.tiny_models:build", device="cpu", scaled_jpeg_decode=True)


def test_scores_of_a_smooth_large_frame_stay_near_a_full_decode(tiny: Scorer, tiny_scaled: Scorer) -> None:
    frame = _jpeg(_scene(1920, 1080))
    full, scaled = (scorer.score_encoded([frame], sources=["frame"])[0] for scorer in (tiny, tiny_scaled))
    assert tiny.preprocess(frame).shape == tiny_scaled.preprocess(frame).shape == (3, 224, 224)
    # A smooth scene has little for the two filters to disagree on; photographs move further
    # (bench/scaled_decoding_accuracy.py).
    for name in ("gradnorm", "energy", "msp", "maxlogit", "feature_l1"):
        assert scaled[name] == pytest.approx(full[name], rel=5e-3), name
    assert scaled["pred"] == full["pred"]
    # preprocess() follows the setting as score_encoded does.
    inputs = (scorer.preprocess(frame) for scorer in (tiny, tiny_scaled))
    assert (next(inputs) - next(inputs)).abs().max() > 0


def test_native_properties_keep_the_size_as_sent_and_read_blocks_as_decoded(tiny_scaled: Scorer) -> None:
    hd, uhd, small = (_jpeg(_scene(*size)) for size in ((1920, 1080), (3840, 2160), (400, 300)))
    outcomes = tiny_scaled.score_encoded([hd, uhd, small], sources=["hd", "uhd", "small"])
    assert [(o["width"], o["height"]) for o in outcomes] == [(1920, 1080), (3840, 2160), (400, 300)]
    assert [o["jpeg_quality"] for o in outcomes] == [90, 90, 90]
    assert math.isfinite(outcomes[0]["blockiness"])  # 2x2 blocks at 1/4
    assert math.isnan(outcomes[1]["blockiness"])  # one pixel a block at 1/8: nothing inside a block to compare


def test_blockiness_at_a_reduced_scale_still_sees_coarse_quantisation(tiny_scaled: Scorer) -> None:
    rng = np.random.default_rng(0)
    # Texture the blocks must quantise: noise over a smooth scene.
    scene = np.clip(_scene(1920, 1080) + rng.normal(0, 12, (1080, 1920, 3)), 0, 255).astype(np.uint8)
    fine, coarse = (_jpeg(scene, quality=quality) for quality in (95, 10))
    outcomes = tiny_scaled.score_encoded([fine, coarse], sources=["fine", "coarse"])
    assert outcomes[1]["blockiness"] > outcomes[0]["blockiness"] * 1.2


def test_the_setting_is_recorded_and_thresholds_hold_only_for_it() -> None:
    scaled = ScoringSettings(scaled_jpeg_decode=True)
    assert scaled.recorded()["scaled_jpeg_decode"] is True
    assert ScoringSettings().recorded()["scaled_jpeg_decode"] is False
    assert scaled.mismatch(scaled.recorded()) is None
    # Thresholds calibrated before the setting existed were scored at full scale.
    assert ScoringSettings().mismatch({"precision": "fp32"}) is None
    message = scaled.mismatch({"precision": "fp32", "decoder": "host", "temperature": 1.0})
    assert "calibrated with --no-scaled-jpeg-decode (recorded before scaled_jpeg_decode was" in message
    assert "monitoring uses --scaled-jpeg-decode" in message
    assert (
        "monitor with --no-scaled-jpeg-decode, or calibrate and approve thresholds with --scaled-jpeg-decode" in message
    )
    message = ScoringSettings().mismatch(scaled.recorded())
    assert "calibrated with --scaled-jpeg-decode, but monitoring uses --no-scaled-jpeg-decode" in message
    assert "recorded before" not in message
