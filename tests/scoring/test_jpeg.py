"""The JPEG header scan agrees with Pillow on what Pillow reads, and gives None, never an exception, on the rest."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from scoring import ImageDecodeError, decode_image
from scoring.jpeg import RGB_IDENTIFIERS, read_jpeg_header

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


def _raw_exif(
    entries: list[tuple[int, int, int, int]], *, byte_order: str = "big", claimed: int | None = None
) -> bytes:
    """An EXIF block with IFD0 holding ``entries`` (tag, type, count, value), in either byte order, as cameras
    write it (Nikon and Canon big-endian); ``claimed`` says a different entry count than there is."""
    order = "big" if byte_order == "big" else "little"
    header = b"MM\x00*" if order == "big" else b"II*\x00"
    packed = b"".join(
        tag.to_bytes(2, order) + kind.to_bytes(2, order) + count.to_bytes(4, order) + value.to_bytes(2, order) + b"\0\0"
        for tag, kind, count, value in entries
    )
    count = len(entries) if claimed is None else claimed
    return b"Exif\x00\x00" + header + (8).to_bytes(4, order) + count.to_bytes(2, order) + packed + b"\0\0\0\0"


def _big_endian_exif(orientation: int | None) -> bytes:
    return _raw_exif([] if orientation is None else [(0x0112, 3, 1, orientation)])


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _insert(data: bytes, *segments: bytes) -> bytes:
    """``data`` with ``segments`` right after its start-of-image marker."""
    return data[:2] + b"".join(segments) + data[2:]


def _remove(data: bytes, marker: int) -> bytes:
    """``data`` without its first segment with ``marker``."""
    start = data.index(bytes([0xFF, marker]))
    return data[:start] + data[start + 2 + int.from_bytes(data[start + 2 : start + 4], "big") :]


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
    "fill-bytes": lambda: _insert(_save(Image.fromarray(_PHOTO)), b"\xff\xff\xff" + _segment(0xFE, b"fill before")),
    "exif-little-endian-sideways": lambda: _save(
        Image.fromarray(_PHOTO), exif=_raw_exif([(0x010F, 2, 4, 0), (0x0112, 3, 1, 8)], byte_order="little")
    ),
    # Pillow appends a second EXIF segment to the first, whose IFD0 holds what counts.
    "second-exif-segment-sideways": lambda: _insert(
        _save(Image.fromarray(_PHOTO)), _segment(0xE1, _big_endian_exif(None)), _segment(0xE1, _big_endian_exif(6))
    ),
    # As Apple's editors write it (one of the ImageNet samples).
    "orientation-given-twice-alike": lambda: _save(
        Image.fromarray(_PHOTO), exif=_raw_exif([(0x0112, 3, 1, 1), (0x0112, 3, 1, 1), (0x011A, 3, 1, 72)])
    ),
    # Pillow keeps the last XMP segment.
    "last-xmp-segment-upright": lambda: _insert(
        _save(Image.fromarray(_PHOTO)),
        _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + _XMP_SIDEWAYS),
        _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + _XMP_UPRIGHT_ELEMENT),
    ),
    "first-exif-segment-sideways": lambda: _insert(
        _save(Image.fromarray(_PHOTO)), _segment(0xE1, _big_endian_exif(6)), _segment(0xE1, _big_endian_exif(1))
    ),
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
        assert header.scans_match_frame
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
    assert not read_jpeg_header(bytes(data)).scans_match_frame


@pytest.mark.parametrize(
    "segment",
    [
        b"\xff\x00",  # a stuffed zero: libjpeg skips it, a length read after it could jump over an EXIF segment
        b"\xff\x01",  # TEM, which Pillow does not know
        b"\xff\xd0",  # a restart marker before any scan
        _segment(0x02, b"\0\0"),  # reserved
        _segment(0xDC, b"\0\0"),  # DNL before any scan
        _segment(0xDE, b"\0" * 6),  # hierarchical progression
        _segment(0xF0, b"\0\0"),  # JPEG extension
        _segment(0xC8, b"\0\0"),  # reserved in the frame range
        b"\xff\xd8",  # a second start of image
    ],
)
def test_markers_libjpeg_or_pillow_reject_before_a_scan_give_none(segment: bytes) -> None:
    assert read_jpeg_header(_insert(VARIANTS["exif-sideways"](), segment)) is None


def test_two_frames_give_none() -> None:
    data = VARIANTS["4:4:4"]()
    frame = data.index(b"\xff\xc0")
    length = int.from_bytes(data[frame + 2 : frame + 4], "big")
    assert read_jpeg_header(_insert(data, data[frame : frame + 2 + length])) is None


@pytest.mark.parametrize(
    ("name", "entries", "claimed"),
    [
        ("orientation as a LONG", [(0x0112, 4, 1, 1)], None),
        ("orientation given twice, two ways", [(0x0112, 3, 1, 6), (0x0112, 3, 1, 1)], None),  # Pillow keeps the 1
        ("IFD0 claims entries past its end", [(0x0112, 3, 1, 1)], 40),
    ],
)
def test_exif_pillow_could_read_another_way_is_not_upright(name: str, entries: list, claimed: int | None) -> None:
    data = _insert(VARIANTS["4:4:4"](), _segment(0xE1, _raw_exif(entries, claimed=claimed)))
    assert not read_jpeg_header(data).upright, name


def test_jfif_counts_only_at_its_full_length_as_libjpeg_reads_it() -> None:
    rgb_coded = _remove(VARIANTS["rgb-coded"](), 0xEE)  # component ids R, G, B and no Adobe marker
    full_jfif = _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    assert read_jpeg_header(_insert(rgb_coded, full_jfif)).ycbcr
    assert not read_jpeg_header(_insert(rgb_coded, _segment(0xE0, b"JFIF\x00\x01\x02"))).ycbcr


@pytest.mark.parametrize(("transform", "ycbcr"), [(0, False), (1, True), (2, True)])
def test_an_adobe_marker_says_whether_ids_one_two_three_are_ycbcr(transform: int, ycbcr: bool) -> None:
    bare = _remove(VARIANTS["4:4:4"](), 0xE0)  # no JFIF, component ids 1, 2, 3
    assert read_jpeg_header(bare).ycbcr
    adobe = _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([transform]))
    assert read_jpeg_header(_insert(bare, adobe)).ycbcr == ycbcr
    assert tuple(identifier for identifier, _, _ in read_jpeg_header(bare).components) != RGB_IDENTIFIERS


def _with_byte(marker: bytes, offset: int, value: int) -> bytes:
    """A 4:2:0 JPEG with the byte ``offset`` past ``marker`` set to ``value``."""
    data = bytearray(VARIANTS["4:2:0"]())
    data[data.index(marker) + offset] = value
    return bytes(data)


_FRAME, _SCAN = b"\xff\xc0", b"\xff\xda"
# Frame: FF C0, length (2), precision, height (2), width (2), count, then (id, sampling, table) per component.
# Scan: FF DA, length (2), count, then (id, tables) per component, then three bytes of spectral selection.
FRAMES_LIBJPEG_REJECTS = {
    "horizontal sampling 0": _with_byte(_FRAME, 11, 0x02),
    "vertical sampling 5": _with_byte(_FRAME, 11, 0x25),
    "two components with one id": _with_byte(_FRAME, 13, 1),
    "frame length past its components": _with_byte(_FRAME, 3, 18),
}
SCANS_LIBJPEG_REJECTS = {
    "no components": _with_byte(_SCAN, 4, 0),
    "five components": _with_byte(_SCAN, 4, 5),
    "one component twice": _with_byte(_SCAN, 7, 1),
    "scan length past its components": _with_byte(_SCAN, 3, 14),
}


@pytest.mark.parametrize("name", sorted(FRAMES_LIBJPEG_REJECTS))
def test_frames_libjpeg_rejects_give_none(name: str) -> None:
    assert read_jpeg_header(FRAMES_LIBJPEG_REJECTS[name]) is None
    with pytest.raises(ImageDecodeError):  # the host path's rejection, which the device must not pre-empt
        decode_image(FRAMES_LIBJPEG_REJECTS[name])


@pytest.mark.parametrize("name", sorted(SCANS_LIBJPEG_REJECTS))
def test_scans_libjpeg_rejects_are_marked(name: str) -> None:
    assert not read_jpeg_header(SCANS_LIBJPEG_REJECTS[name]).scans_match_frame
    with pytest.raises(ImageDecodeError):
        decode_image(SCANS_LIBJPEG_REJECTS[name])


def test_fill_bytes_read_as_libjpeg_reads_them_however_many() -> None:
    plain = VARIANTS["4:2:0"]()
    assert read_jpeg_header(_insert(plain, b"\xff" * 100_000 + _segment(0xFE, b"padded"))) == read_jpeg_header(plain)
    assert read_jpeg_header(plain[:2] + b"\xff" * 1000) is None
    # Inside entropy-coded data, fill bytes may come before a stuffed zero: libjpeg and Pillow read on.
    progressive = VARIANTS["progressive"]()
    stuffed = progressive.index(b"\xff\x00", progressive.index(b"\xff\xda"))
    padded = progressive[:stuffed] + b"\xff" + progressive[stuffed:]
    assert read_jpeg_header(padded).scans_match_frame
    decode_image(padded)


def test_a_later_progressive_scan_naming_a_component_the_frame_lacks_is_marked() -> None:
    data = VARIANTS["progressive"]()
    assert read_jpeg_header(data).scans_match_frame
    last_scan = data.rindex(b"\xff\xda")
    broken = bytearray(data)
    broken[last_scan + 5] = 9  # the last scan's first component id
    assert not read_jpeg_header(bytes(broken)).scans_match_frame
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(broken))
    assert not read_jpeg_header(data[:-2]).scans_match_frame  # scans read up to the end of the image, or not at all


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


@pytest.mark.parametrize("quality", [1, 7, 10, 15, 18, 25, 49, 50, 51, 75, 90, 95, 100])
def test_encoder_quality_is_read_back_from_the_luminance_table(quality: int) -> None:
    photo = Image.fromarray(_PHOTO)
    assert read_jpeg_header(_save(photo, quality=quality)).quality == quality
    assert read_jpeg_header(_save(photo.convert("L"), quality=quality)).quality == quality


def test_quality_is_unknown_without_an_8_bit_luminance_table_and_the_header_still_reads() -> None:
    data = _save(Image.fromarray(_PHOTO), quality=80)
    sixteen_bit = _segment(0xDB, bytes([0x10]) + bytes(128))  # table 0 in 16-bit precision
    tables = data.index(b"\xff\xdb")
    without = data[:tables] + data[tables + 2 + int.from_bytes(data[tables + 2 : tables + 4], "big") :]
    while b"\xff\xdb" in without[:200]:  # Pillow writes one segment per table
        tables = without.index(b"\xff\xdb")
        without = without[:tables] + without[tables + 2 + int.from_bytes(without[tables + 2 : tables + 4], "big") :]
    assert read_jpeg_header(_insert(without, sixteen_bit)).quality is None
    assert read_jpeg_header(_insert(data, _segment(0xDB, b"\x00\x01"))).quality == 80  # a short table: the next
