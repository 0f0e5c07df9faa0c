"""Reading images' bytes, with a dead-letter output of one record per image that cannot be read.

Decoding happens in the model handler, beside the model, where host threads or the GPU's JPEG decoder keep
the device busy; images that fail to decode leave the handler as rejections (``pipelines.inference``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
from apache_beam.metrics import Metrics

from pipelines.records import REJECTED, EncodedImage, ImageRef, Rejected
from pipelines.times import object_mtime

# Errors that re-reading will not cure. Anything else (throttling, a dropped connection) propagates so the
# runner retries the bundle: marking a readable image rejected would lose it for good.
_PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class ReadImages(beam.PTransform):
    """``ImageRef | Rejected`` -> ``images`` (EncodedImage) and ``rejected``, inside [since, until).

    Every ref and rejection that reaches it is counted as listed, but for refs outside the time range, which
    are dropped before their bytes are read.
    """

    def __init__(self, *, max_bytes: int, since: dt.datetime | None, until: dt.datetime | None) -> None:
        """
        Args:
            max_bytes: the preprocessing's limit; one byte more is read, so the decoder can reject it as too large
                without holding a bigger object in memory.
            since: first event time kept.
            until: first event time dropped.
        """
        super().__init__()
        self._read = ReadImage(max_bytes=max_bytes, since=since, until=until)

    def expand(self, listed: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        # Reads spread over every worker, whichever one listed them.
        spread = listed | "SpreadImages" >> beam.Reshuffle()
        return spread | "Read" >> beam.ParDo(self._read).with_outputs(REJECTED, main="images")


class ReadImage(beam.DoFn):
    """ImageRef -> EncodedImage (main) or Rejected (``rejected``); a listing's Rejected passes through.

    Refs without an event time get the object's modification time.
    """

    def __init__(self, *, max_bytes: int, since: dt.datetime | None = None, until: dt.datetime | None = None) -> None:
        self._max_bytes = max_bytes
        self._since = since
        self._until = until
        self._listed = Metrics.counter("gradwatch", "listed")
        self._bytes_read = Metrics.counter("gradwatch", "bytes_read")

    def process(self, entry: ImageRef | Rejected) -> Iterator[Any]:
        if isinstance(entry, Rejected):
            self._listed.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, entry)
            return
        fs, path = fsspec.core.url_to_fs(entry.uri)
        event_time = entry.event_time
        try:
            if event_time is None:
                event_time = object_mtime(fs.info(path))
            if not self._in_range(event_time):
                return
            self._listed.inc()
            with fs.open(path, "rb") as file:
                data = file.read(self._max_bytes + 1)
        except _PERMANENT_READ_ERRORS as error:
            if event_time is None:  # its time is unknown, so it cannot be placed outside the range
                self._listed.inc()
            reason = "not_found" if isinstance(error, FileNotFoundError) else "unreadable"
            message = f"cannot read {entry.uri!r}: {type(error).__name__}: {error}; check the path and permissions"
            yield beam.pvalue.TaggedOutput(
                REJECTED, Rejected(entry.uri, event_time, "read", reason, message, entry.segment)
            )
            return
        self._bytes_read.inc(len(data))
        yield EncodedImage(hashlib.sha256(data).hexdigest(), entry.uri, event_time, entry.segment, data)

    def _in_range(self, event_time: dt.datetime) -> bool:
        return (self._since is None or event_time >= self._since) and (self._until is None or event_time < self._until)
