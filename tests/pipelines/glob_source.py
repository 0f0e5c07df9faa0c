"""A test-only source kind, to show that a new kind is one file: ``glob:PATTERN``, every file matching an fsspec
glob pattern (``glob:s3://feed/*/2026-11-26T13*.jpg``), its modification time its event time."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import fsspec

from pipelines.records import ImageRef
from pipelines.sources import Source, SourceError, register_source, uri_of
from pipelines.times import object_mtime

PREFIX = "glob:"


def _matches(pattern: str) -> Iterator[ImageRef]:
    fs, path = fsspec.core.url_to_fs(pattern)
    for name, info in sorted(fs.glob(path, detail=True).items()):
        if info["type"] != "directory":
            yield ImageRef(uri_of(fs, name), object_mtime(info))


@register_source
class GlobSource(Source):
    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.startswith(PREFIX)

    @property
    def pattern(self) -> str:
        return self.uri.removeprefix(PREFIX)

    def check(self) -> None:
        if not any(True for _ in _matches(self.pattern)):
            raise SourceError(f"SOURCE {self.uri!r} matches no file; check the pattern")

    def list(self) -> Iterator[ImageRef]:
        yield from _matches(self.pattern)

    def listing(self) -> beam.PTransform:
        return beam.Create([self.pattern]) | "Matches" >> beam.FlatMap(_matches)
