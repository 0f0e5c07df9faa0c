"""Reading images' bytes, with a dead-letter output of one record per image that cannot be read.

Decoding happens in the model handler, beside the model, where host threads or the GPU's JPEG decoder keep
the device busy; images that fail to decode leave the handler as rejections (``pipelines.inference``).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import pickle
import stat
import zlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
from apache_beam.metrics import Metrics
from fsspec.implementations.local import LocalFileSystem

from pipelines.records import REJECTED, EncodedImage, ImageRef, Rejected
from pipelines.redaction import redact, redact_logs
from pipelines.sources import image_identity
from pipelines.times import PlausibleTimes, object_mtime

# Errors that re-reading will not cure. Anything else (throttling, a dropped connection) propagates so the
# runner retries the bundle: marking a readable image rejected would lose it for good.
_PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# A link loop or a name too long for the filesystem: the same on every retry.
_PERMANENT_ERRNOS = {errno.ELOOP, errno.ENAMETOOLONG}
# HTTP statuses that say the object is not there for good.
_GONE_STATUSES = {404, 410}
# Client errors that a retry can cure: a request timeout, "too early", throttling. Any other 4xx is final.
_RETRYABLE_STATUSES = {408, 425, 429}
# Most listed refs a batch carries through the shuffle to the reads: about 200 KB of refs.
_LISTED_BATCH = 1024


class PermanentReadError(Exception):
    """A path no retry makes readable: a FIFO, socket or device (opening a FIFO waits for a writer forever), a
    link loop, a name too long for the filesystem."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientReadError(OSError):
    """Reading failed for a reason a retry can cure (refused connection, timeout, 5xx, throttling)."""


class ReadImages(beam.PTransform):
    """``ImageRef | Rejected`` -> ``images`` (EncodedImage) and ``rejected``, inside [since, until).

    Every ref and rejection that reaches it is counted as listed, but for refs outside the time range, which
    are dropped before their bytes are read.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        since: dt.datetime | None,
        until: dt.datetime | None,
        plausible: PlausibleTimes = PlausibleTimes(),
    ) -> None:
        """
        Args:
            max_bytes: the preprocessing's limit; one byte more is read, so the decoder can reject it as too large
                without holding a bigger object in memory.
            since: first event time kept.
            until: first event time dropped.
            plausible: event times an image can have; an image outside them is rejected in every run, whatever
                its range, as rejections of unknown time are.
        """
        super().__init__()
        self._read = ReadImage(max_bytes=max_bytes, since=since, until=until, plausible=plausible)

    def expand(self, listed: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        spread = listed | "SpreadImages" >> SpreadListed()
        return spread | "Read" >> beam.ParDo(self._read).with_outputs(REJECTED, main="images")


class SpreadListed(beam.PTransform):
    """``ImageRef | Rejected`` -> the same, spread over every worker, whichever one listed them: what a run does
    with its listing before the first read.

    Refs cross the shuffle in batches, each pickled whole and compressed: one by one, encoding and grouping them
    held a manifest of a million rows over a minute before its first image was read (75 µs a ref on 2 local
    workers), and the local runner keeps what it groups as decoded objects, 1.4 KB a ref where a pickled batch takes
    100 bytes. The local runner's launcher still grew 700 MB on a million pickled refs (bench/scale.py --parts
    plan), about seven copies of them; compressed, a ref takes 18 bytes and it grows 206 MB, for 0.4 µs a ref.
    Batches start at one ref and grow, so a listing of ten images still spreads its reads.
    """

    def expand(self, listed: beam.PCollection) -> beam.PCollection:
        return (
            listed
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=_LISTED_BATCH)
            | "Pack" >> beam.Map(packed_refs)
            | "Shuffle" >> beam.Reshuffle()
            | "Unpack" >> beam.FlatMap(unpacked_refs)
        )


def packed_refs(batch: list[ImageRef | Rejected]) -> bytes:
    """A batch of listed refs as the shuffle carries it. A listing's URIs share long prefixes: zlib's fastest level
    takes a manifest's refs from 100 bytes to 18."""
    return zlib.compress(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpacked_refs(packed: bytes) -> list[ImageRef | Rejected]:
    return pickle.loads(zlib.decompress(packed))


class ReadImage(beam.DoFn):
    """ImageRef -> EncodedImage (main) or Rejected (``rejected``); a listing's Rejected passes through.

    Refs without an event time get the object's modification time. What leaves it names the image by its
    identity (credentials stripped); only the read itself uses the URI as listed.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        plausible: PlausibleTimes = PlausibleTimes(),
    ) -> None:
        self._max_bytes = max_bytes
        self._since = since
        self._until = until
        self._plausible = plausible
        self._listed = Metrics.counter("gradwatch", "listed")
        self._bytes_read = Metrics.counter("gradwatch", "bytes_read")

    def setup(self) -> None:
        redact_logs()  # a worker process of its own logs what fsspec fetches, too

    def process(self, entry: ImageRef | Rejected) -> Iterator[Any]:
        if isinstance(entry, Rejected):
            # One with a known time belongs to its window, as an image does: a run over other windows would
            # otherwise rewrite that window's tables with it alone.
            if entry.event_time is None or self._in_range(entry.event_time):
                self._listed.inc()
                yield beam.pvalue.TaggedOutput(REJECTED, entry)
            return
        identity = image_identity(entry.uri)
        fs, path = fsspec.core.url_to_fs(entry.uri)
        event_time = entry.event_time
        try:
            if event_time is None:
                event_time = object_mtime(_checked(fs.info, identity, path))
            implausible = self._plausible.problem(event_time)
            if implausible is not None:
                self._listed.inc()
                rejection = Rejected(identity, None, "read", "implausible_event_time", implausible, entry.segment)
                yield beam.pvalue.TaggedOutput(REJECTED, rejection)
                return
            if not self._in_range(event_time):
                return
            self._listed.inc()
            data = _checked(self._read_bytes, identity, fs, path)
        except (*_PERMANENT_READ_ERRORS, PermanentReadError) as error:
            if event_time is None:  # its time is unknown, so it cannot be placed outside the range
                self._listed.inc()
            reason = getattr(error, "reason", "not_found" if isinstance(error, FileNotFoundError) else "unreadable")
            message = f"cannot read {identity!r}: {type(error).__name__}: {redact(str(error))}; check the path"
            rejection = Rejected(identity, event_time, "read", reason, message, entry.segment)
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
            return
        self._bytes_read.inc(len(data))
        yield EncodedImage(hashlib.sha256(data).hexdigest(), identity, event_time, entry.segment, data)

    def _read_bytes(self, fs: fsspec.AbstractFileSystem, path: str) -> bytes:
        with open_image_file(fs, path) as file:
            return file.read(self._max_bytes + 1)

    def _in_range(self, event_time: dt.datetime) -> bool:
        return (self._since is None or event_time >= self._since) and (self._until is None or event_time < self._until)


def open_image_file(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """``fs.open(path, "rb")``, but a FIFO, socket or device on a local disk is refused: opening a FIFO waits for a
    writer forever.

    Raises:
        PermanentReadError: it is not a file.
    """
    if isinstance(fs, LocalFileSystem) and not stat.S_ISREG(os.stat(path).st_mode):
        raise PermanentReadError("not_a_file", "a FIFO, socket or device, not an image file")
    return fs.open(path, "rb")


def _checked(call: Any, identity: str, *args: Any) -> Any:
    """``call(*args)``, its errors sorted into permanent ones (raised as they are, for a rejection) and transient
    ones (raised as :class:`TransientReadError`, which fails the bundle so the runner retries it)."""
    try:
        return call(*args)
    except FileNotFoundError as error:
        # fsspec's HTTP filesystem reports any failure of its HEAD and GET as "not found", a refused connection too.
        status = _status(error)
        if _is_transient(error):
            # Not chained: the cause prints the URL as listed, credentials and all.
            message = f"reading {identity!r} failed and will be retried: {redact(_cause(error))}"
            raise TransientReadError(message) from None
        if status is not None and status not in _GONE_STATUSES:  # 401, 403: a retry gets the same answer
            raise PermanentReadError("unreadable", f"HTTP {status}; check the URL's access") from None
        raise
    except OSError as error:
        if error.errno in _PERMANENT_ERRNOS:
            raise PermanentReadError("unreadable", error.strerror or str(error)) from None
        raise


def is_permanent_read_failure(error: BaseException) -> bool:
    """Whether reading failed for good (so the image is a rejection), not for a reason a retry can cure."""
    if isinstance(error, FileNotFoundError):
        return not _is_transient(error)
    return isinstance(error, (*_PERMANENT_READ_ERRORS, PermanentReadError)) or (
        isinstance(error, OSError) and error.errno in _PERMANENT_ERRNOS
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    cause = error.__cause__ or error.__context__
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _status(error: BaseException) -> int | None:
    for cause in _causes(error):
        status = getattr(cause, "status", None)
        if isinstance(status, int):
            return status
    return None


def _is_transient(error: FileNotFoundError) -> bool:
    """Whether a "not found" hides a failure a retry can cure: a 5xx, a timeout (408), throttling (429), or an
    error with no HTTP answer at all (a refused connection, a dropped one)."""
    status = _status(error)
    if status is not None:
        return status >= 500 or status in _RETRYABLE_STATUSES
    return any(not isinstance(cause, FileNotFoundError) for cause in _causes(error))


def _cause(error: BaseException) -> str:
    deepest = list(_causes(error))[-1:] or [error]
    return f"{type(deepest[0]).__name__}: {deepest[0]}"
