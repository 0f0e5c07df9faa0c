"""The JPEG header scan agrees with Pillow on what Pillow reads, and gives None, never an exception, on the rest."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from scoring.jpeg import read_jpeg_header

_PHOTO = skimage_data.chelsea()


def _save(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif(orientation: int | None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "gradwatch test camera"  # a tag before the orientation, so the scan walks IFD0's entries
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


def _big_endian_exif(orientation: int | None) -> bytes:
    """A Motorola-order EXIF block (as Nikon and Canon write) holding one orientation entry."""
    entries = [] if orientation is None else [(0x0112).to_bytes(2, "big") + b"\x00\x03" + (1).to_bytes(4, "big")]
    if orientation is not None:
        entries[0] += orientation.to_bytes(2, "big") + b"\x00\x00"
    ifd = len(entries).to_bytes(2, "big") + b"".join(entries) + b"\x00\x00\x00\x00"
    return b"Exif\x00\x00MM\x00*" + (8).to_bytes(4, "big") + ifd


_XMP_SIDEWAYS = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)
_XMP_PLAIN = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
# As Photoshop writes it: an element, not an attribute. 16 of the 1,800 JPEGs in ../shared/data carry one (all 1).
_XMP_UPRIGHT_ELEMENT = (
    b"<x:xmpmeta><rdf:Description><tiff:Orientation>1</tiff:Orientation></rdf:Description></x:xmpmeta>"
)
_XMP_SIDEWAYS_ELEMENT = _XMP_UPRIGHT_ELEMENT.replace(b">1<", b">8<")

VARIANTS = {
    "4:2:0": lambda: _save(Image.fromarray(_PHOTO), subsampling=2),
    "4:2:2": lambda: _save(Image.fromarray(_PHOTO), subsampling=1),
    "4:4:4": lambda: _save(Image.fromarray(_PHOTO), subsampling=0),
    "progressive": lambda: _save(Image.fromarray(_PHOTO), progressive=True),
    "optimised-with-restarts": lambda: _save(Image.fromarray(_PHOTO), optimize=True, restart_marker_blocks=4),
    "grey-1x1": lambda: _save(Image.fromarray(_PHOTO).convert("L"), subsampling=0),
    "grey-2x2": lambda: _save(Image.fromarray(_PHOTO).convert("L"), subsampling=2),
    "cmyk": lambda: _save(Image.fromarray(_PHOTO).convert("CMYK")),
    "rgb-coded": lambda: _save(Image.fromarray(_PHOTO), keep_rgb=True),
    "icc-and-comment": lambda: _save(Image.fromarray(_PHOTO), icc_profile=b"\x00" * 70_000, comment=b"line 4"),
    "exif-upright": lambda: _save(Image.fromarray(_PHOTO), exif=_exif(1)),
    "exif-without-orientation": lambda: _save(Image.fromarray(_PHOTO), exif=_exif(None)),
    "exif-sideways": lambda: _save(Image.fromarray(_PHOTO), exif=_exif(6)),
    "exif-sideways-big-endian": lambda: _save(Image.fromarray(_PHOTO), exif=_big_endian_exif(6)),
    "exif-upright-big-endian": lambda: _save(Image.fromarray(_PHOTO), exif=_big_endian_exif(1)),
    "xmp-sideways": lambda: _save(Image.fromarray(_PHOTO), xmp=_XMP_SIDEWAYS),
    "xmp-plain": lambda: _save(Image.fromarray(_PHOTO), xmp=_XMP_PLAIN),
    "xmp-upright-element": lambda: _save(Image.fromarray(_PHOTO), xmp=_XMP_UPRIGHT_ELEMENT),
    "xmp-sideways-element": lambda: _save(Image.fromarray(_PHOTO), xmp=_XMP_SIDEWAYS_ELEMENT),
    # EXIF's orientation wins over XMP's, in Pillow and here.
    "exif-upright-xmp-sideways": lambda: _save(Image.fromarray(_PHOTO), exif=_exif(1), xmp=_XMP_SIDEWAYS),
    "exif-without-orientation-xmp-sideways": lambda: _save(
        Image.fromarray(_PHOTO), exif=_exif(None), xmp=_XMP_SIDEWAYS
    ),
    "tiny": lambda: _save(Image.fromarray(_PHOTO[:1, :3])),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_header_scan_reads_what_pillow_reads(variant: str) -> None:
    data = VARIANTS[variant]()
    header = read_jpeg_header(data)
    with Image.open(io.BytesIO(data)) as pillow:
        assert header is not None
        assert (header.width, header.height) == pillow.size
        assert header.components == tuple(layer[:3] for layer in pillow.layer)
        assert header.precision == 8
        assert header.coding == (2 if "progressive" in pillow.info else 0)
        assert header.upright == (pillow.getexif().get(0x0112, 1) in (0, 1))
        assert header.ycbcr == (pillow.mode == "RGB" and variant != "rgb-coded")
        assert header.scan_matches_frame
        assert not header.multi_picture


def test_an_rgb_coded_jpeg_is_told_from_ycbcr_as_libjpeg_does() -> None:
    # Pillow writes an Adobe marker with transform 0; without it, component ids R, G, B say the same.
    adobe = VARIANTS["rgb-coded"]()
    assert not read_jpeg_header(adobe).ycbcr
    start = adobe.index(b"\xff\xee")
    bare = adobe[:start] + adobe[start + 2 + int.from_bytes(adobe[start + 2 : start + 4], "big") :]
    assert "adobe" not in Image.open(io.BytesIO(bare)).info
    assert not read_jpeg_header(bare).ycbcr
    assert read_jpeg_header(VARIANTS["4:4:4"]()).ycbcr


def test_multi_picture_files_are_marked() -> None:
    first, second = Image.fromarray(_PHOTO), Image.fromarray(_PHOTO[::2, ::2])
    data = _save(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert read_jpeg_header(data).multi_picture


def test_frame_coding_and_precision_come_from_the_frame_marker() -> None:
    data = bytearray(VARIANTS["4:4:4"]())
    frame = data.index(b"\xff\xc0")
    data[frame + 1] = 0xC3  # lossless
    data[frame + 4] = 12
    header = read_jpeg_header(bytes(data))
    assert (header.coding, header.precision) == (3, 12)


def test_a_scan_naming_a_component_the_frame_lacks_is_marked() -> None:
    data = bytearray(VARIANTS["4:2:0"]())
    start_of_scan = data.index(b"\xff\xda")
    data[start_of_scan + 5] = 9  # FF DA, length (2 bytes), component count, then the first component's id
    assert not read_jpeg_header(bytes(data)).scan_matches_frame


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xd8", b"\xff\xd8\xff\xd9", b"GIF89a", b"\xff\xd8\xff\xe0\x00\x01", b"\xff\xd8\x00\x00\x00\x00"],
)
def test_what_is_not_a_jpeg_header_gives_none(data: bytes) -> None:
    assert read_jpeg_header(data) is None


def test_a_header_cut_short_gives_none() -> None:
    data = VARIANTS["exif-sideways"]()
    start_of_scan = data.index(b"\xff\xda")
    assert all(read_jpeg_header(data[:end]) is None for end in range(start_of_scan + 2))


def test_hostile_headers_give_none_or_a_header_never_an_exception() -> None:
    rng = np.random.default_rng(8)
    originals = [VARIANTS[name]() for name in ("exif-sideways-big-endian", "exif-upright", "progressive", "cmyk")]
    for _ in range(3000):
        data = bytearray(originals[rng.integers(len(originals))])
        header_end = data.index(b"\xff\xda") + 14
        for position in rng.integers(0, header_end, rng.integers(1, 6)):
            data[position] = rng.integers(0, 256)
        header = read_jpeg_header(bytes(data))
        assert header is None or header.width > 0
