"""What a JPEG's header says, read from its markers without decoding anything.

The device decoder checks every image's header before handing it to nvJPEG. Pillow's ``Image.open`` answered that
in about 21 µs an image on ImageNet photos (2-core CPU), this scan in about 7 (bench/host_costs.py), which matters
because the check runs under the interpreter lock beside the threads that feed the GPU (issue 8). Anything that
does not read cleanly gives None, and the caller leaves that image to the host path, which names what is wrong.
Marker layout: ITU-T T.81 annex B; EXIF: CIPA DC-008 (a TIFF header, then IFD0's 12-byte entries).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

_START_OF_IMAGE = b"\xff\xd8"
# Start-of-frame markers; C4 (Huffman tables), C8 (reserved) and CC (arithmetic conditioning) share the range.
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_START_OF_SCAN = 0xDA
_END_OF_IMAGE = 0xD9
# Markers with no length after them: a stuffed zero, TEM, the restart markers, start and end of image.
_WITHOUT_LENGTH = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})
# What libjpeg and Pillow both read between frame and scans: Huffman and arithmetic tables, quantisation tables,
# restart interval, comments and application segments. Anything else there (a restart or TEM marker, a stuffed
# zero, DNL, hierarchical or extension markers, reserved codes) one of them rejects, or reads its own way.
_TABLES_AND_METADATA = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)})
# After a scan's entropy-coded data, the next marker: an 0xFF there is followed by 0x00 or by a restart marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_FILL = re.compile(rb"\xff+")
# What may follow fill bytes inside entropy-coded data: a stuffed zero, or a restart marker.
_IN_ENTROPY_CODED_DATA = frozenset({0x00, *range(0xD0, 0xD8)})
# libjpeg's limits (jpeglib.h, jdinput.c): sampling factors 1 to 4, at most 4 components in one scan.
_SAMPLING_FACTORS = range(1, 5)
_COMPONENTS_IN_SCAN = range(1, 5)
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_MULTI_PICTURE = b"MPF\x00"
# libjpeg counts an APP0 as JFIF only with its full 14 bytes (jdmarker.c, examine_app0).
_JFIF = b"JFIF\x00"
_JFIF_LENGTH = 14
_ADOBE = b"Adobe"
_ADOBE_LENGTH = 12
_ORIENTATION_TAG = 0x0112
# Pillow's pattern for the orientation XMP gives when EXIF has none (PIL.Image.Image.getexif).
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
# What _exif_orientation gives for EXIF it cannot read: not upright, so the host path decides.
_UNREADABLE = -1
_TIFF_SHORT = 3
# Component identifiers of an RGB-coded frame without JFIF or Adobe markers ('R', 'G', 'B'), as libjpeg reads them.
RGB_IDENTIFIERS = (82, 71, 66)
_QUANTISATION_TABLES = 0xDB
# The luminance table of T.81 annex K, which libjpeg (and so Pillow, and most encoders) scales by quality, in the
# zigzag order tables are written in.
_ANNEX_K_LUMINANCE = (
    16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35, 37, 29, 40, 58, 51,
    61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87, 95, 98, 103, 104, 103, 62, 77,
    113, 121, 112, 100, 120, 92, 101, 103, 99,
)  # fmt: skip


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
    # Every scan's header reads as libjpeg requires: 1 to 4 components the frame declares, each once. Scans
    # after the first are read only where there must be some (progressive files, or a first scan that leaves
    # components out); then the markers up to the end of the image must read too.
    scans_match_frame: bool
    # The encoder quality (1 to 100) whose libjpeg scaling of annex K's table comes nearest the luminance table,
    # as ImageMagick and forensic tools estimate it; None without an 8-bit table 0 before the first scan.
    quality: int | None = None


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of ``data``, or None where its markers do not read as a JPEG's up to the first scan.

    Never raises on hostile bytes: every malformed length, offset or count gives None.
    """
    if not data.startswith(_START_OF_IMAGE):
        return None
    position = len(_START_OF_IMAGE)
    frame: tuple[int, int, int, int, tuple[tuple[int, int, int], ...]] | None = None
    jfif = multi_picture = False
    adobe_transform: int | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    luminance: tuple[int, ...] | None = None
    while True:
        segment = _segment(data, position)
        if segment is None:
            return None
        marker, start, end = segment
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
            identifiers = {identifier for identifier, _, _ in components}
            scanned = _scan_components(data[start:end], identifiers)
            if scanned is not None and (coding == 2 or scanned != identifiers):
                scans_match_frame = _later_scans_match(data, end, identifiers)
            else:
                scans_match_frame = scanned is not None
            return JpegHeader(
                width=width,
                height=height,
                precision=precision,
                coding=coding,
                components=components,
                ycbcr=_ycbcr(components, jfif=jfif, adobe_transform=adobe_transform),
                upright=_orientation(exif, xmp) in (None, 0, 1),
                multi_picture=multi_picture,
                scans_match_frame=scans_match_frame,
                quality=None if luminance is None else estimated_quality(luminance),
            )
        elif marker not in _TABLES_AND_METADATA:
            return None
        elif marker == _QUANTISATION_TABLES:
            luminance = _luminance_table(data[start:end]) or luminance
        elif marker == 0xE0:
            jfif = jfif or (data.startswith(_JFIF, start, end) and end - start >= _JFIF_LENGTH)
        elif marker == 0xE1:
            # IFD0 is in the first EXIF segment (Pillow appends any more); Pillow keeps the last XMP one.
            if exif is None and data.startswith(_EXIF, start, end):
                exif = data[start + len(_EXIF) : end]
            elif data.startswith(_XMP, start, end):
                xmp = data[start + len(_XMP) : end]
        elif marker == 0xE2:
            multi_picture = multi_picture or data.startswith(_MULTI_PICTURE, start, end)
        elif marker == 0xEE and data.startswith(_ADOBE, start, end) and end - start >= _ADOBE_LENGTH:
            adobe_transform = data[start + 11]


@functools.lru_cache(maxsize=256)
def estimated_quality(luminance: tuple[int, ...]) -> int:
    """The libjpeg quality whose scaled annex K table is nearest (in summed absolute difference) ``luminance``.

    libjpeg (jcparam.c) scales by 5000 / q below 50 and by 200 - 2q from 50, rounds and keeps values in 1..255, so
    tables libjpeg or Pillow wrote give their quality back exactly; other encoders' tables give the nearest. Cached:
    a camera writes the same table into every photo.
    """
    distances = np.abs(_SCALED_TABLES - np.asarray(luminance)).sum(axis=1)
    return int(np.argmin(distances)) + 1


def _scaled_tables() -> np.ndarray:
    """Annex K's luminance table as libjpeg scales it for each quality 1 to 100: (100, 64)."""
    qualities = np.arange(1, 101)
    scales = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)
    return np.clip((np.asarray(_ANNEX_K_LUMINANCE)[None] * scales[:, None] + 50) // 100, 1, 255)


_SCALED_TABLES = _scaled_tables()


def _luminance_table(segment: bytes) -> tuple[int, ...] | None:
    """Table 0 of a quantisation-table segment when it holds an 8-bit one (zigzag order), else None."""
    position = 0
    while position < len(segment):
        precision, table = segment[position] >> 4, segment[position] & 0x0F
        size = 64 * (precision + 1)
        if precision > 1 or position + 1 + size > len(segment):
            return None
        if table == 0 and precision == 0:
            return tuple(segment[position + 1 : position + 1 + size])
        position += 1 + size
    return None


def _segment(data: bytes, position: int) -> tuple[int, int, int] | None:
    """The marker at ``position`` (after any 0xFF fill bytes) and where its segment's payload starts and ends.

    A marker without a length (start or end of image, restart, TEM, a stuffed zero) gives its code with an empty
    payload; a length that runs past the data gives None.
    """
    size = len(data)
    if position + 2 > size or data[position] != 0xFF:
        return None
    if data[position + 1] == 0xFF:  # fill bytes may pad before any marker: skipped at C speed, however many
        position = _FILL.match(data, position).end() - 1
        if position + 2 > size:
            return None
    marker = data[position + 1]
    position += 2
    if marker in _WITHOUT_LENGTH:
        return marker, position, position
    if position + 2 > size:
        return None
    end = position + (data[position] << 8 | data[position + 1])
    if end < position + 2 or end > size:
        return None
    return marker, position + 2, end


def _read_frame(segment: bytes, *, coding: int) -> tuple[int, int, int, int, tuple[tuple[int, int, int], ...]] | None:
    """The frame, or None where libjpeg would refuse it (jdmarker.c get_sof, jdinput.c initial_setup) or its ids
    repeat."""
    if len(segment) < 6:
        return None
    precision = segment[0]
    height = segment[1] << 8 | segment[2]
    width = segment[3] << 8 | segment[4]
    count = segment[5]
    # Height 0 defers it to a DNL marker after the first scan, which no camera writes.
    if count == 0 or len(segment) != 6 + 3 * count or width == 0 or height == 0:
        return None
    components = tuple(
        (segment[start], segment[start + 1] >> 4, segment[start + 1] & 0x0F) for start in range(6, 6 + 3 * count, 3)
    )
    if any(h not in _SAMPLING_FACTORS or v not in _SAMPLING_FACTORS for _, h, v in components):
        return None
    # Repeated ids leave a scan unable to say which component it codes: libjpeg-turbo renames them, nvJPEG is
    # untested, so the host decodes such files.
    if len({identifier for identifier, _, _ in components}) != count:
        return None
    return width, height, precision, coding, components


def _scan_components(segment: bytes, identifiers: set[int]) -> set[int] | None:
    """The components a scan header codes, or None where libjpeg would reject it (jdmarker.c get_sos)."""
    if not segment or segment[0] not in _COMPONENTS_IN_SCAN or len(segment) != 4 + 2 * segment[0]:
        return None
    scanned = [segment[start] for start in range(1, 1 + 2 * segment[0], 2)]
    if len(set(scanned)) != len(scanned) or not set(scanned) <= identifiers:
        return None
    return set(scanned)


def _later_scans_match(data: bytes, position: int, identifiers: set[int]) -> bool:
    """Whether every scan after the one ending its header at ``position`` reads, up to the end of the image.

    A regular expression finds each next marker past the entropy-coded data at C speed: about 20 µs for a
    60 KB progressive photo, which is why single-scan files skip this.
    """
    while (found := _NEXT_MARKER.search(data, position)) is not None:
        segment = _segment(data, found.start())
        if segment is None:
            return False
        marker, start, end = segment
        if marker == _END_OF_IMAGE:
            return True
        if marker in _IN_ENTROPY_CODED_DATA:
            position = end
            continue
        if marker == _START_OF_SCAN and _scan_components(data[start:end], identifiers) is None:
            return False
        if marker != _START_OF_SCAN and marker not in _TABLES_AND_METADATA:
            return False
        position = end
    return False


def _orientation(exif: bytes | None, xmp: bytes | None) -> int | None:
    """The orientation Pillow would read: EXIF's, else XMP's; None where neither gives one."""
    orientation = None if exif is None else _exif_orientation(exif)
    if orientation is None and xmp is not None and (match := _XMP_ORIENTATION.search(xmp)):
        orientation = int(match[2])
    return orientation


def _exif_orientation(tiff: bytes) -> int | None:
    """IFD0's orientation, None when it has none, or _UNREADABLE (a tag Pillow would read another way too)."""
    byte_order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(tiff[:4])
    if byte_order is None or len(tiff) < 8:
        return _UNREADABLE
    directory = int.from_bytes(tiff[4:8], byte_order)
    if directory + 2 > len(tiff):
        return _UNREADABLE
    orientation = None
    for entry in range(int.from_bytes(tiff[directory : directory + 2], byte_order)):
        entry_start = directory + 2 + 12 * entry
        if entry_start + 12 > len(tiff):
            return _UNREADABLE
        if int.from_bytes(tiff[entry_start : entry_start + 2], byte_order) != _ORIENTATION_TAG:
            continue
        kind = int.from_bytes(tiff[entry_start + 2 : entry_start + 4], byte_order)
        count = int.from_bytes(tiff[entry_start + 4 : entry_start + 8], byte_order)
        value = int.from_bytes(tiff[entry_start + 8 : entry_start + 10], byte_order)
        # Pillow keeps the last of repeated tags; Apple's editors repeat this one, with the same value.
        if (kind, count) != (_TIFF_SHORT, 1) or orientation not in (None, value):
            return _UNREADABLE
        orientation = value
    return orientation


def _ycbcr(components: tuple[tuple[int, int, int], ...], *, jfif: bool, adobe_transform: int | None) -> bool:
    """libjpeg's rule (jdapimin.c, default_decompress_parms) for whether three components are YCbCr."""
    if len(components) != 3:
        return False
    if jfif:
        return True
    if adobe_transform is not None:
        return adobe_transform != 0
    return tuple(identifier for identifier, _, _ in components) != RGB_IDENTIFIERS
