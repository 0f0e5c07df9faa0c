"""Where production images come from: one :class:`Source` kind per file in this package, found by its URI.

A source lists its images as :class:`~pipelines.records.ImageRef` (and anything it cannot use as a
:class:`~pipelines.records.Rejected`, so nothing is lost) in two ways: all at once in one process, for the monitor
to plan windows, and as a Beam transform that spreads the listing over workers. A new kind (a message queue, a
database table) is one new module here that subclasses :class:`Source` and calls :func:`register_source`; every
module here is imported with the package.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import os
import pkgutil
import posixpath
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.records import ImageRef, Rejected
from pipelines.redaction import redact
from pipelines.times import object_mtime
from pipelines.uris import canonical_uri
from scoring import GradwatchError


class SourceError(GradwatchError):
    """SOURCE cannot be listed; the message says what to pass instead."""


class Source(ABC):
    """One SOURCE an operator names (a URI), and how to list it.

    Subclasses are plain values (their URI and what they derive from it), so Beam can pickle them to workers.
    """

    def __init__(self, uri: str) -> None:
        # One spelling per source: the key names its output files, so ``feed/m.csv`` and ``/data/feed/m.csv``
        # must not score the same images twice.
        self.uri = canonical_uri(uri)
        self._given_uri = uri

    @classmethod
    @abstractmethod
    def claims(cls, uri: str) -> bool:
        """Whether a URI names a source of this kind."""

    @abstractmethod
    def check(self) -> None:
        """Fail before a pipeline starts when the source is not there.

        Raises:
            SourceError: naming the source and what it must be.
        """

    @abstractmethod
    def list(self) -> Iterator[ImageRef | Rejected]:
        """Every image in one process, event times resolved where they can be; for planning, not for scoring."""

    def count_listed(self, since: dt.datetime | None, until: dt.datetime | None) -> int:
        """About how many images the pipeline will count as listed in [since, until), those of unknown time
        included: a progress bar's total."""
        return sum(1 for entry in self.list() if in_time_range(entry, since, until))

    @abstractmethod
    def listing(self) -> beam.PTransform:
        """A transform from the pipeline's start to a PCollection of ``ImageRef | Rejected``, spread over workers.

        A ref may leave its event time unknown (None): the read step looks it up beside the bytes.
        """

    @property
    def name(self) -> str:
        """A short name for run names and labels: the last part of the URI."""
        return redact(posixpath.basename(self.uri.rstrip("/")) or self.uri)

    @property
    def key(self) -> str:
        """A file-name-safe key naming the source, stable across runs and credentials: its outputs' part files
        carry it."""
        return hashlib.sha256(redact(self.uri).encode()).hexdigest()[:16]

    @property
    def former_keys(self) -> tuple[str, ...]:
        """Keys earlier versions of gradwatch named this source's files with (the URI as given, not canonical): a run
        removes them where it writes, so an upgraded run replaces those rows instead of adding to them."""
        former = hashlib.sha256(self._given_uri.encode()).hexdigest()[:16]
        return (former,) if former != self.key else ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def in_time_range(entry: ImageRef | Rejected, since: dt.datetime | None, until: dt.datetime | None) -> bool:
    """Whether a listed entry is in [since, until); one of unknown time is, as the read step counts it."""
    time = entry.event_time
    return time is None or ((since is None or time >= since) and (until is None or time < until))


_KINDS: list[type[Source]] = []
_FALLBACK: list[type[Source]] = []


def register_source(kind: type[Source] | None = None, *, fallback: bool = False):
    """Class decorator adding a source kind; a ``fallback`` kind takes any URI no other kind claims."""

    def add(kind: type[Source]) -> type[Source]:
        (_FALLBACK if fallback else _KINDS).append(kind)
        return kind

    return add(kind) if kind is not None else add


def open_source(uri: str) -> Source:
    """The source a URI names (a manifest by its suffix, else a folder or prefix).

    Raises:
        SourceError: no kind claims it.
    """
    for kind in (*_KINDS, *_FALLBACK):
        if kind.claims(uri):
            return kind(uri)
    raise SourceError(f"SOURCE {uri!r} is not a kind of source gradwatch reads; pass a folder, prefix or manifest")


def image_identity(uri: str) -> str:
    """An image's URI as every table and message stores it: canonical, credentials stripped."""
    return redact(canonical_uri(uri))


def printable_uri(uri: str) -> str:
    """A listed name as text any table can store: bytes that are not UTF-8 (an old camera's Latin-1 names, kept by
    Python as surrogates) shown as ``\\xff``."""
    return uri.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def listed_file(fs: fsspec.AbstractFileSystem, info: Mapping[str, Any]) -> ImageRef | Rejected:
    """A listed entry that is not a folder: an image ref, or the rejection saying why it cannot be one.

    A name that is not UTF-8, a FIFO (reading it would wait forever), a socket or device, a link to a folder (links
    to folders are not followed, so a link loop cannot list forever) and a broken or looping link are rejected,
    each named; a link to a file is that file.
    """
    uri = uri_of(fs, info["name"])
    shown = printable_uri(uri)
    if shown != uri:
        message = f"file name '{shown}' is not UTF-8, which the tables cannot store; rename the file in UTF-8"
        return Rejected(shown, None, "list", "bad_name", message)
    if info["type"] == "file":
        return ImageRef(uri, object_mtime(info))
    if not isinstance(fs, LocalFileSystem):
        return Rejected(uri, None, "list", "not_a_file", f"{uri!r} is a {info['type']}, not a file; remove it")
    try:
        target = os.stat(info["name"])
    except OSError as error:  # a broken link, or a loop (ELOOP)
        message = f"cannot follow {uri!r}: {error.strerror or error}; fix or remove the link"
        return Rejected(uri, None, "list", "unreadable", message)
    if stat.S_ISREG(target.st_mode):
        return ImageRef(uri, object_mtime({"mtime": target.st_mtime}))
    what = "a link to a folder (not followed)" if stat.S_ISDIR(target.st_mode) else "a FIFO, socket or device"
    return Rejected(uri, None, "list", "not_a_file", f"{uri!r} is {what}, not an image file; remove it from SOURCE")


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A listed path as the URI the rest of gradwatch uses: a plain path on a local disk, with its scheme elsewhere."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def is_hidden(path: str, root: str) -> bool:
    """Whether a path under ``root`` is hidden (a ``.name`` file or folder on the way), as editors' files are."""
    relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return any(part.startswith(".") for part in relative.split("/"))


# Last, because each source module imports the base class from this package.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
