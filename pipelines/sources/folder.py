"""A folder or object-store prefix: every file under it is an image, its modification time its event time.

Listed in two steps so the work spreads over workers: the top level on one worker, then each sub-folder on
whichever worker takes it (one camera per folder lists in parallel). Hidden files and folders are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec

from pipelines.records import ImageRef, Rejected
from pipelines.sources import Source, SourceError, is_hidden, listed_file, register_source, uri_of

_SUBTREE = "subtree"


@register_source(fallback=True)
class FolderSource(Source):
    @classmethod
    def claims(cls, uri: str) -> bool:
        return True

    def check(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.uri)
        if not fs.isdir(path):
            raise SourceError(
                f"SOURCE {self.uri!r} is not a folder, prefix or manifest (.csv, .parquet, .jsonl); "
                "check the path, or install the fsspec filesystem for its URL scheme (s3fs, gcsfs, adlfs)"
            )

    def list(self) -> Iterator[ImageRef | Rejected]:
        yield from _files_under(self.uri)

    def listing(self) -> beam.PTransform:
        return _ListFolder(self.uri)


class _ListFolder(beam.PTransform):
    def __init__(self, uri: str) -> None:
        super().__init__()
        self._uri = uri

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        top = (
            begin
            | "Folder" >> beam.Create([self._uri])
            | "TopLevel" >> beam.ParDo(_ListTopLevel()).with_outputs(_SUBTREE, main="files")
        )
        nested = top[_SUBTREE] | "SpreadFolders" >> beam.Reshuffle() | "SubFolders" >> beam.FlatMap(_files_under)
        return (top.files, nested) | "AllFiles" >> beam.Flatten()


class _ListTopLevel(beam.DoFn):
    """A folder -> refs of its files (main), and its sub-folders (``subtree``)."""

    def process(self, folder: str) -> Iterator[Any]:
        fs, root = fsspec.core.url_to_fs(folder)
        fs.invalidate_cache(root)  # a listing cached by an earlier run in this process would miss new images
        if not fs.isdir(root):
            raise FileNotFoundError(f"SOURCE {folder!r} is not a folder, prefix or manifest (.csv, .parquet, .jsonl)")
        for info in fs.ls(root, detail=True):
            name = info["name"]
            if is_hidden(name, root):
                continue
            if info["type"] == "directory":
                yield beam.pvalue.TaggedOutput(_SUBTREE, uri_of(fs, name))
            else:
                yield listed_file(fs, info)


def _files_under(folder: str) -> Iterator[ImageRef | Rejected]:
    fs, root = fsspec.core.url_to_fs(folder)
    fs.invalidate_cache(root)
    for name, info in sorted(fs.find(root, detail=True).items()):
        if info["type"] != "directory" and not is_hidden(name, root):
            yield listed_file(fs, info)
