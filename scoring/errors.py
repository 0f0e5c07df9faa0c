"""Named exceptions of the scoring layer; each message names the input and says the fix."""

from __future__ import annotations

from typing import Literal

RejectReason = Literal["empty", "too_large", "not_an_image", "truncated", "corrupt", "unreadable"]

_FIXES: dict[str, str] = {
    "empty": "the producer wrote a 0-byte object; check the upload that created it",
    "too_large": "raise max_pixels/max_bytes in Preprocessing if such images are expected, "
    "otherwise this is a decompression bomb or a wrong file",
    "not_an_image": "only JPEG, PNG, WebP, BMP, GIF and TIFF are scored; filter other files out of SOURCE",
    "truncated": "the bytes end before the image does; re-send the complete file",
    "corrupt": "the decoder rejected the data; re-encode the image or drop it at the producer",
    "unreadable": "check that the path exists and is readable by the worker",
}


class GradwatchError(Exception):
    """Base of every error gradwatch raises on purpose."""


class ImageDecodeError(GradwatchError):
    """One input could not become a model input; the batch it came in goes on.

    Attributes:
        source: the input's name (path, URI, or ``"<bytes>"``) as the caller gave it.
        reason: a short machine-readable code, stored as the rejection reason downstream.
        detail: what the decoder said.
    """

    def __init__(self, source: str, reason: RejectReason, detail: str) -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        super().__init__(f"cannot score image {source!r}: {reason} ({detail}). Fix: {_FIXES[reason]}.")

    def __reduce__(self):  # Beam pickles dead-letter exceptions across processes.
        return (type(self), (self.source, self.reason, self.detail))


class ModelSpecError(GradwatchError):
    """A model spec cannot be turned into a scorer; the message says how to write it."""


class DecoderUnavailableError(GradwatchError):
    """``decoder="device"`` cannot work here: torchvision does not load, or the model resamples in a way torch
    cannot reproduce; the message says what to install or to decode on the host."""


class UnusableReferenceError(GradwatchError, ValueError):
    """Nothing in a reference can be learned from (none of its images decodes); the message says where to look."""
