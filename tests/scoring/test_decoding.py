"""Scoring encoded images: host threads, the device's JPEG decoder, and the host fallback per image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from scoring import DecoderUnavailableError, ImageDecodeError, Preprocessing, Scorer, decode_image, load_scorer
from scoring.decoding import _matmul_may_round, _padded_runs, decodes_on_device
from tests.scoring import test_jpeg
from tests.scoring.test_images import ODD


def torchvision_loads() -> bool:
    try:
        import torchvision.io  # noqa: F401
    except (ImportError, RuntimeError):  # RuntimeError: a torchvision built for another torch
        return False
    return True


needs_torchvision = pytest.mark.skipif(
    not torchvision_loads(), reason="torchvision is not installed (optional): decoder='device' needs it"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: nvJPEG decoding needs one")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: queueing on one needs one")


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _photos_as_jpeg(subsampling: int = 2) -> list[bytes]:
    """Three colour photos and a grey one; ``subsampling`` 2 is 4:2:0 chroma (cameras' and Pillow's default), 0 none."""
    photos = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut(), skimage_data.camera()]
    return [_encode(photo, "JPEG", quality=90, subsampling=subsampling) for photo in photos]


def _jpeg_with_a_broken_scan() -> bytes:
    """A JPEG whose scan names a component the frame lacks: libjpeg fails on it, nvJPEG decodes it."""
    data = bytearray(_encode(skimage_data.chelsea(), "JPEG"))
    start_of_scan = data.index(b"\xff\xda")
    data[start_of_scan + 5] = 9  # FF DA, length (2 bytes), component count, then the first component's id
    return bytes(data)


def _jpeg_with_an_undefined_table() -> bytes:
    """A JPEG whose header reads but whose scan codes with Huffman tables never defined: decoding fails."""
    data = bytearray(_encode(skimage_data.chelsea(), "JPEG"))
    start_of_scan = data.index(b"\xff\xda")
    data[start_of_scan + 6] = 0x33  # the first component's DC and AC table selectors, after its id
    return bytes(data)


def _sideways_jpeg() -> bytes:
    """A photo stored rotated, with the EXIF orientation that tells viewers to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def _xmp_sideways_jpeg() -> bytes:
    """A photo stored rotated whose orientation is in XMP only, no EXIF: Pillow turns it upright too."""
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    rotated = skimage_data.chelsea().transpose(1, 0, 2)[::-1]
    return _encode(np.ascontiguousarray(rotated), "JPEG", xmp=xmp.encode())


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.coffee()).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def _expected(scorer: Scorer, images: list[bytes]) -> list[dict[str, float] | str]:
    """Scores one image at a time through score(preprocess(...)), or the rejection reason."""
    expected: list[dict[str, float] | str] = []
    for data in images:
        try:
            tensor = scorer.preprocess(data)
        except ImageDecodeError as error:
            expected.append(error.reason)
            continue
        expected.append({name: column[0].item() for name, column in scorer.score(tensor[None]).items()})
    return expected


def _assert_outcomes(outcomes, expected, *, rtol: float) -> None:
    assert len(outcomes) == len(expected)
    for index, (outcome, wanted) in enumerate(zip(outcomes, expected, strict=True)):
        if isinstance(wanted, str):
            assert isinstance(outcome, ImageDecodeError), f"image {index}: scored, expected {wanted}"
            assert outcome.reason == wanted, f"image {index}"
            assert outcome.source == f"image-{index}"
        else:
            assert isinstance(outcome, dict), f"image {index}: {outcome}"
            assert outcome["pred"] == wanted["pred"], f"image {index}"
            for name in ("gradnorm", "energy", "maxlogit", "feature_l1"):
                assert outcome[name] == pytest.approx(wanted[name], rel=rtol), f"image {index} {name}"


def test_encoded_images_score_as_their_decoded_tensors_and_bad_ones_are_named(efficientnet: Scorer) -> None:
    images = [*_photos_as_jpeg(), _encode(skimage_data.rocket(), "PNG")]
    images[2:2] = [make() for make, _ in ODD.values()]  # bad images between good ones, order kept
    outcomes = efficientnet.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
    # Batched and one-at-a-time forward passes differ in float32 summation order only.
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=1e-5)


def test_groups_of_encoded_images_keep_their_order(tiny: Scorer) -> None:
    rng = np.random.default_rng(1)
    images = [_encode(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "PNG") for _ in range(11)]
    images[5] = b"not an image"
    outcomes = tiny.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
    _assert_outcomes(outcomes, _expected(tiny, images), rtol=1e-5)  # tiny scores in groups of 4


def test_one_source_per_image(tiny: Scorer) -> None:
    with pytest.raises(ValueError, match="one source per image"):
        tiny.score_encoded([b"a", b"b"], sources=["only-one"])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "camera"])
def test_torch_preprocessing_follows_pillow(interpolation: str, photo: str) -> None:
    preprocessing = Preprocessing(interpolation=interpolation)
    image = decode_image(_encode(getattr(skimage_data, photo)(), "PNG"))
    expected = preprocessing.to_tensor(image)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    actual = preprocessing.pixels_to_tensor(pixels)
    grey_levels = ((actual - expected) * torch.tensor(preprocessing.std).view(3, 1, 1) * 255).abs()
    # Pillow resamples in fixed point, so a value near a half may round the other way: never by more than one
    # grey level, at up to 1 pixel in 8 for an exact 2x reduction (astronaut), far fewer at other scales.
    assert grey_levels.max() <= 1 + 1e-3
    assert (grey_levels > 0.5).float().mean() < 0.15


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_frames_of_any_sizes_preprocess_together_as_one_at_a_time(interpolation: str) -> None:
    preprocessing = Preprocessing(interpolation=interpolation)
    rng = np.random.default_rng(2)
    photos = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut()]
    # Crops of photos at many sizes and both orientations, a frame smaller than the crop (enlarged) and one
    # reduced 6x (2048 x 1536; enlarged smoothly, as block copies would put many sums exactly on a half).
    frames = [
        torch.from_numpy(
            np.ascontiguousarray(photo[: rng.integers(200, photo.shape[0]), : rng.integers(200, photo.shape[1])])
        )
        for photo in photos * 3
    ]
    frames += [
        torch.from_numpy(np.array(Image.fromarray(photos[2]).resize((2048, 1536), Image.Resampling.BICUBIC))),
        frames[0][:90, :120],
    ]
    frames = [frame.permute(2, 0, 1).contiguous() for frame in frames]
    together = preprocessing.frames_to_tensor(frames)
    assert together.shape == (len(frames), 3, 224, 224)
    one_at_a_time = torch.stack([preprocessing.pixels_to_tensor(frame) for frame in frames])
    grey_levels = ((together - one_at_a_time) * torch.tensor(preprocessing.std).view(3, 1, 1) * 255).abs()
    # The same weights summed in another order: a value within float error of a half may round the other way.
    assert grey_levels.max() <= 1 + 1e-3
    assert (grey_levels > 0.5).float().mean() < 1e-3


def test_padded_runs_stay_within_the_memory_budget() -> None:
    frames = [
        torch.zeros(3, 100, 100),
        None,
        torch.zeros(3, 300, 300),
        torch.zeros(3, 100, 120),
        torch.zeros(3, 100, 100),
    ]
    # Frames and weights: 866,800 bytes a 100x100 frame, 1,040,160 one padded to 100x120.
    runs = list(_padded_runs([0, 2, 3, 4], frames, crop=224, budget=2_000_000))
    # Sorted by size: two 100x100 fit, a third padded to 100x120 does not; a frame past the budget goes alone.
    assert runs == [[0, 4], [3], [2]]


def test_frames_are_resampled_one_at_a_time_where_matrix_products_may_use_tf32(monkeypatch) -> None:
    assert not _matmul_may_round()
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert _matmul_may_round()

    def mixed_settings() -> str:
        raise RuntimeError("you have used mix of the legacy and new APIs to set the matmul precision")

    monkeypatch.setattr(torch, "get_float32_matmul_precision", mixed_settings)
    assert _matmul_may_round()


def test_preprocessing_given_lists_normalises_as_with_tuples() -> None:
    pixels = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 240, 320), dtype=np.uint8))
    listed = Preprocessing(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).pixels_to_tensor(pixels)  # type: ignore[arg-type]
    torch.testing.assert_close(listed, Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3).pixels_to_tensor(pixels))


def test_torch_preprocessing_refuses_what_it_cannot_resample() -> None:
    with pytest.raises(ValueError, match="decode on the host"):
        Preprocessing(interpolation="lanczos").pixels_to_tensor(torch.zeros(3, 8, 8, dtype=torch.uint8))


def _with_frame_marker(marker: int, precision: int = 8) -> bytes:
    data = bytearray(_encode(skimage_data.chelsea(), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 1], data[frame + 4] = marker, precision
    return bytes(data)


DEVICE_DECISIONS = {
    "4:2:0": (lambda: _photos_as_jpeg()[0], True),
    "4:4:4": (lambda: _photos_as_jpeg(subsampling=0)[0], True),
    "progressive": (test_jpeg.VARIANTS["progressive"], True),
    "grey-1x1": (test_jpeg.VARIANTS["grey-1x1"], True),
    "exif-upright": (test_jpeg.VARIANTS["exif-upright"], True),
    "undefined-table": (_jpeg_with_an_undefined_table, True),  # only decoding finds it broken
    "grey-2x2": (test_jpeg.VARIANTS["grey-2x2"], False),  # nvJPEG decoded one wrong
    "cmyk": (_cmyk_jpeg, False),
    "rgb-coded": (test_jpeg.VARIANTS["rgb-coded"], False),
    "rgb-ids-with-jfif": (
        lambda: test_jpeg._insert(
            test_jpeg._remove(test_jpeg.VARIANTS["rgb-coded"](), 0xEE),
            test_jpeg._segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
        ),
        False,
    ),
    "lossless": (lambda: _with_frame_marker(0xC3), False),
    "arithmetic": (lambda: _with_frame_marker(0xC9), False),
    "12-bit": (lambda: _with_frame_marker(0xC1, precision=12), False),
    "mpo": (
        lambda: test_jpeg._save(
            Image.fromarray(skimage_data.chelsea()), "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))]
        ),
        False,
    ),
    "exif-sideways": (_sideways_jpeg, False),
    "xmp-sideways": (_xmp_sideways_jpeg, False),
    "broken-scan": (_jpeg_with_a_broken_scan, False),  # nvJPEG decodes it, libjpeg does not
    "truncated": (ODD["truncated-jpeg"][0], False),
    "png": (lambda: _encode(skimage_data.rocket(), "PNG"), False),
    "text": (lambda: b"<html>403</html>", False),
}


@pytest.mark.parametrize("name", sorted(DEVICE_DECISIONS))
def test_the_device_takes_only_jpegs_it_decodes_as_the_host_does(name: str) -> None:
    make, expected = DEVICE_DECISIONS[name]
    assert decodes_on_device(make(), Preprocessing()) == expected


def test_the_device_leaves_images_past_the_limits_to_the_host() -> None:
    data = _photos_as_jpeg()[0]  # 451 x 300
    assert not decodes_on_device(data, Preprocessing(max_pixels=451 * 300 - 1))
    assert not decodes_on_device(data, Preprocessing(max_bytes=len(data) - 1))
    assert not decodes_on_device(_encode(skimage_data.chelsea()[:2], "JPEG"), Preprocessing(max_pixels=50_000))


@pytest.mark.skipif(torchvision_loads(), reason="torchvision is installed here")
def test_device_decoding_without_torchvision_says_what_to_install() -> None:
    with pytest.raises(DecoderUnavailableError, match="decoder='host'"):
        load_scorer("tests.scoring.tiny_models:build", device="cpu", decoder="device")


@needs_torchvision
def test_device_decoding_scores_as_the_host_does(efficientnet: Scorer) -> None:
    images = _photos_as_jpeg()
    device = load_scorer("efficientnet-lite0", device="cpu", decoder="device")
    # The grey photo, its one component sampled 2x2, is left to the host (nvJPEG decodes it wrong).
    assert [device._device_decoder.accepts(data) for data in images] == [True, True, True, False]
    sources = [f"image-{index}" for index in range(len(images))]
    outcomes = device.score_encoded(images, sources=sources)
    # Same libjpeg-turbo on the CPU; resampling within a grey level of Pillow's.
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=5e-3)
    # The properties too: native ones from the same pixels, input ones from pixels within a grey level.
    for by_device, by_host in zip(outcomes, efficientnet.score_encoded(images, sources=sources), strict=True):
        for name in efficientnet.property_names:
            assert by_device[name] == pytest.approx(by_host[name], rel=2e-2, abs=1e-4, nan_ok=True), name


@needs_torchvision
def test_device_decoding_leaves_what_it_cannot_decode_to_the_host(efficientnet: Scorer) -> None:
    device = load_scorer("efficientnet-lite0", device="cpu", decoder="device")
    photos = _photos_as_jpeg()
    others = {
        "png": _encode(skimage_data.rocket(), "PNG"),
        "cmyk": _cmyk_jpeg(),
        "sideways": _sideways_jpeg(),  # nvJPEG would not turn it upright
        "grey-2x2": _encode(skimage_data.camera(), "JPEG", subsampling=2),  # nvJPEG decodes it wrong
        "xmp-sideways": _xmp_sideways_jpeg(),
        "truncated": ODD["truncated-jpeg"][0](),
        "broken-scan": _jpeg_with_a_broken_scan(),  # nvJPEG would decode it where the host rejects it
        "undefined-table": _jpeg_with_an_undefined_table(),
        "text": b"<html>403</html>",
    }
    accepted = [name for name, data in others.items() if device._device_decoder.accepts(data)]
    assert accepted == ["undefined-table"]  # only decoding finds it broken
    images = [photos[0], *others.values(), photos[1]]
    outcomes = device.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=5e-3)
    assert outcomes[1 + list(others).index("undefined-table")].reason == "corrupt"  # by the host, after the device


@needs_torchvision
def test_device_decoding_resampling_frames_together_scores_as_the_host_does(efficientnet: Scorer, monkeypatch) -> None:
    # What a GPU does, here on the CPU: frames of several sizes resampled in padded runs. Padded to 512x600, three
    # photos fit the budget (26.7 MB) and the fourth does not.
    device = load_scorer("efficientnet-lite0", device="cpu", decoder="device")
    device._device_decoder._resample_together = True
    monkeypatch.setattr("scoring.decoding.DEVICE_RESAMPLE_BYTES", 30_000_000)
    photos = _photos_as_jpeg()
    images = [photos[0], _encode(skimage_data.rocket(), "PNG"), *photos[1:], photos[2], _sideways_jpeg()]
    sources = [f"image-{index}" for index in range(len(images))]
    outcomes = device.score_encoded(images, sources=sources)
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=5e-3)

    # Where matrix products may run in TF32, frames are resampled one at a time instead.
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    monkeypatch.setattr(Preprocessing, "frames_to_tensor", lambda *_: pytest.fail("resampled together under TF32"))
    _assert_outcomes(device.score_encoded(images, sources=sources), _expected(efficientnet, images), rtol=5e-3)


@needs_torchvision
def test_a_chunk_the_device_fails_on_is_decoded_on_the_host(efficientnet: Scorer, monkeypatch, caplog) -> None:
    device = load_scorer("efficientnet-lite0", device="cpu", decoder="device")

    def broken(images):
        raise ValueError("device lost")

    monkeypatch.setattr(device._device_decoder, "decode", broken)
    images = [*_photos_as_jpeg(), b"not an image"]
    outcomes = device.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=1e-5)
    assert "device lost" in caplog.text


@needs_torchvision
@needs_cuda
def test_nvjpeg_decoding_scores_as_the_host_does(efficientnet: Scorer) -> None:
    # Host-decoded images (a PNG, a sideways photo, a scan naming a component its frame lacks, which nvJPEG
    # would decode and libjpeg rejects) share groups with device-decoded ones.
    photos = _photos_as_jpeg(subsampling=0)
    png = _encode(skimage_data.rocket(), "PNG")
    images = [photos[0], png, *photos[1:], _sideways_jpeg(), _jpeg_with_a_broken_scan()]
    gpu = load_scorer("efficientnet-lite0", device="cuda", decoder="device")
    outcomes = gpu.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
    # Without chroma subsampling nvJPEG gives libjpeg's pixels bit for bit (seen on an H200); what is left is
    # resampling within a grey level and the GPU's TF32 convolutions.
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=1e-2)


@needs_torchvision
@needs_cuda
def test_nvjpeg_decoding_of_subsampled_chroma_moves_scores_a_little(efficientnet: Scorer) -> None:
    images = _photos_as_jpeg(subsampling=2)
    gpu = load_scorer("efficientnet-lite0", device="cuda", decoder="device")
    outcomes = gpu.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
    # nvJPEG upsamples 4:2:0 chroma unlike libjpeg: on an H200, pixels up to 22 grey levels apart at colour
    # edges and GradNorm up to 3.9e-2 apart on ImageNet photos. Hence calibrations record the decoder and
    # monitoring refuses thresholds calibrated on images decoded the other way.
    _assert_outcomes(outcomes, _expected(efficientnet, images), rtol=5e-2)


@needs_gpu
def test_many_groups_on_the_gpu_keep_their_images(efficientnet: Scorer) -> None:
    # Enough images for several queued groups and, decoding on the device, more chunks than are decoded ahead.
    photos = _photos_as_jpeg(subsampling=0)
    images = photos * 75
    expected = _expected(efficientnet, photos) * 75
    for decoder in ("host", *(["device"] if torchvision_loads() else [])):
        gpu = load_scorer("efficientnet-lite0", device="cuda", decoder=decoder)
        outcomes = gpu.score_encoded(images, sources=[f"image-{index}" for index in range(len(images))])
        _assert_outcomes(outcomes, expected, rtol=1e-2)  # TF32 convolutions, as above
