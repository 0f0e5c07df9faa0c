"""What a JPEG's header says, read from its markers up to the first scan, without decoding anything.

The device decoder checks every image's header before handing it to nvJPEG. Pillow's ``Image.open`` answered that
in about 30 µs an image on ImageNet photos (2-core CPU); this scan answers it in a few, which matters because the
check runs under the interpreter lock beside the threads that feed the GPU (issue 8). Anything that does not read
cleanly gives None, and the caller leaves that image to the host path, which names what is wrong with it.
Marker layout: ITU-T T.81 annex B; EXIF: CIPA DC-008 (a TIFF header, then IFD0's 12-byte entries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_START_OF_IMAGE = b"\xff\xd8"
# Start-of-frame markers; C4 (Huffman tables), C8 (reserved) and CC (arithmetic conditioning) share the range.
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_START_OF_SCAN = 0xDA
# Markers with no length after them: TEM and the restart markers.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_MULTI_PICTURE = b"MPF\x00"
_ORIENTATION_TAG = 0x0112
# Pillow's pattern for the orientation XMP gives when EXIF has none (PIL.Image.Image.getexif).
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
# What _exif_orientation gives for EXIF it cannot read: not upright, so the host path decides.
_UNREADABLE = -1
_TIFF_SHORT = 3
# Component identifiers of an RGB-coded frame without JFIF or Adobe markers ('R', 'G', 'B'), as libjpeg reads them.
_RGB_IDENTIFIERS = (82, 71, 66)


@dataclass(frozen=True)
class JpegHeader:
    """The frame and metadata of a JPEG as a decoder sees them before its first scan."""

    width: int
    height: int
    # Bits per sample: 8 for nearly every JPEG; 12 in some medical and scientific ones.
    precision: int
    # Low nibble of the start-of-frame marker: 0 baseline, 1 extended, 2 progressive; the rest lossless,
    # hierarchical or arithmetic-coded.
    coding: int
    # (identifier, horizontal sampling, vertical sampling) per component, in frame order.
    components: tuple[tuple[int, int, int], ...]
    # Whether libjpeg turns three components from YCbCr into RGB (JFIF and most files) or takes them as RGB.
    ycbcr: bool
    # No orientation asks for turning: EXIF's, or XMP's where EXIF has none, is absent, 0 or 1, as Pillow reads it.
    upright: bool
    # An MPO (a phone's multi-picture JPEG: several images, one after another).
    multi_picture: bool
    # Every component the first scan codes is one the frame declares.
    scan_matches_frame: bool


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of ``data``, or None where its markers do not read as a JPEG's up to the first scan.

    Never raises on hostile bytes: every malformed length, offset or count gives None.
    """
    if not data.startswith(_START_OF_IMAGE):
        return None
    size = len(data)
    position = len(_START_OF_IMAGE)
    frame: tuple[int, int, int, int, tuple[tuple[int, int, int], ...]] | None = None
    jfif = multi_picture = False
    adobe_transform: int | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    while True:
        if position + 4 > size or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        while marker == 0xFF:  # fill bytes may pad before any marker
            position += 1
            if position + 4 > size:
                return None
            marker = data[position + 1]
        position += 2
        if marker in _STANDALONE:
            continue
        if marker in (0xD8, 0xD9):  # a second start of image, or an end before any scan
            return None
        end = position + (data[position] << 8 | data[position + 1])
        start = position + 2
        if end < start or end > size:
            return None
        position = end
        if marker in _FRAMES:
            if frame is not None:
                return None
            frame = _read_frame(data[start:end], coding=marker & 0x0F)
            if frame is None:
                return None
        elif marker == _START_OF_SCAN:
            if frame is None:
                return None
            width, height, precision, coding, components = frame
            scanned = _scan_components(data[start:end])
            return JpegHeader(
                width=width,
                height=height,
                precision=precision,
                coding=coding,
                components=components,
                ycbcr=_ycbcr(components, jfif=jfif, adobe_transform=adobe_transform),
                upright=_orientation(exif, xmp) in (None, 0, 1),
                multi_picture=multi_picture,
                scan_matches_frame=scanned is not None and scanned <= {identifier for identifier, _, _ in components},
            )
        elif marker == 0xE0:
            jfif = jfif or data.startswith(b"JFIF\x00", start, end)
        elif marker == 0xE1:
            # IFD0 is in the first EXIF segment (Pillow appends any more); Pillow keeps the last XMP one.
            if exif is None and data.startswith(_EXIF, start, end):
                exif = data[start + len(_EXIF) : end]
            elif data.startswith(_XMP, start, end):
                xmp = data[start + len(_XMP) : end]
        elif marker == 0xE2:
            multi_picture = multi_picture or data.startswith(_MULTI_PICTURE, start, end)
        elif marker == 0xEE and data.startswith(b"Adobe", start, end) and end - start >= 12:
            adobe_transform = data[start + 11]


def _read_frame(segment: bytes, *, coding: int) -> tuple[int, int, int, int, tuple[tuple[int, int, int], ...]] | None:
    if len(segment) < 6:
        return None
    precision = segment[0]
    height = segment[1] << 8 | segment[2]
    width = segment[3] << 8 | segment[4]
    count = segment[5]
    if count == 0 or len(segment) < 6 + 3 * count or width == 0 or height == 0:
        return None  # height 0 defers it to a DNL marker after the scan, which no photo uses
    components = tuple(
        (segment[start], segment[start + 1] >> 4, segment[start + 1] & 0x0F) for start in range(6, 6 + 3 * count, 3)
    )
    return width, height, precision, coding, components


def _scan_components(segment: bytes) -> set[int] | None:
    if not segment or len(segment) < 1 + 2 * segment[0]:
        return None
    return {segment[start] for start in range(1, 1 + 2 * segment[0], 2)}


def _orientation(exif: bytes | None, xmp: bytes | None) -> int | None:
    """The orientation Pillow would read: EXIF's, else XMP's; None where neither gives one."""
    orientation = None if exif is None else _exif_orientation(exif)
    if orientation is None and xmp is not None and (match := _XMP_ORIENTATION.search(xmp)):
        orientation = int(match[2])
    return orientation


def _exif_orientation(tiff: bytes) -> int | None:
    """IFD0's orientation, None when it has none, or _UNREADABLE."""
    byte_order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(tiff[:4])
    if byte_order is None or len(tiff) < 8:
        return _UNREADABLE
    directory = int.from_bytes(tiff[4:8], byte_order)
    if directory + 2 > len(tiff):
        return _UNREADABLE
    for entry in range(int.from_bytes(tiff[directory : directory + 2], byte_order)):
        entry_start = directory + 2 + 12 * entry
        if entry_start + 12 > len(tiff):
            return _UNREADABLE
        if int.from_bytes(tiff[entry_start : entry_start + 2], byte_order) != _ORIENTATION_TAG:
            continue
        kind = int.from_bytes(tiff[entry_start + 2 : entry_start + 4], byte_order)
        count = int.from_bytes(tiff[entry_start + 4 : entry_start + 8], byte_order)
        value = int.from_bytes(tiff[entry_start + 8 : entry_start + 10], byte_order)
        return value if (kind, count) == (_TIFF_SHORT, 1) else _UNREADABLE
    return None


def _ycbcr(components: tuple[tuple[int, int, int], ...], *, jfif: bool, adobe_transform: int | None) -> bool:
    """libjpeg's rule (jdapimin.c, default_decompress_parms) for whether three components are YCbCr."""
    if len(components) != 3:
        return False
    if jfif:
        return True
    if adobe_transform is not None:
        return adobe_transform != 0
    return tuple(identifier for identifier, _, _ in components) != _RGB_IDENTIFIERS
