"""A manifest: a .csv, .parquet or .jsonl file with a row per image (uri, and optionally event_time and segment).

Read row by row; a row that cannot be used becomes a rejection naming the row and the fix, and the rest go on.
Relative URIs resolve against the manifest's folder, so a folder can carry its own manifest.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from pipelines.records import ImageRef, Rejected
from pipelines.sources import Source, SourceError, register_source
from pipelines.times import object_mtime, parse_event_time

SUFFIXES = (".csv", ".parquet", ".jsonl")


@register_source
class ManifestSource(Source):
    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.lower().endswith(SUFFIXES)

    def check(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.uri)
        if not fs.isfile(path):
            raise SourceError(f"manifest {self.uri!r} does not exist; pass an existing .csv, .parquet or .jsonl file")

    def list(self) -> Iterator[ImageRef | Rejected]:
        for entry in manifest_entries(self.uri):
            if isinstance(entry, ImageRef) and entry.event_time is None:
                fs, path = fsspec.core.url_to_fs(entry.uri)
                try:
                    entry = ImageRef(entry.uri, object_mtime(fs.info(path)), entry.segment)
                except FileNotFoundError:
                    continue  # the pipeline rejects it with its reason when the window is scored
            yield entry

    def listing(self) -> beam.PTransform:
        return beam.Create([self.uri]) | "Rows" >> beam.FlatMap(manifest_entries)


def manifest_entries(manifest: str) -> Iterator[ImageRef | Rejected]:
    """Each manifest row as an image ref, or as a rejection saying what is wrong with the row."""
    base = posixpath.dirname(manifest)
    for row_number, (row, unreadable) in enumerate(_manifest_rows(manifest), start=1):
        uri = str(row.get("uri") or "").strip()
        where = f"{manifest} row {row_number}"
        problem = None
        event_time = None
        if unreadable:
            problem = ("bad_row", f"{where}: {unreadable}; write one JSON object per line")
        elif not uri:
            problem = ("missing_uri", f"{where} has no uri; every manifest row needs one")
        elif "event_time" in row:
            try:
                event_time = parse_event_time(_required(row["event_time"]))
            except ValueError as error:
                problem = ("bad_event_time", f"{where} ({uri}): {error}")
        if problem is not None:
            reason, message = problem
            yield Rejected(uri or where, None, "manifest", reason, message, _segment(row))
            continue
        if "://" not in uri and not posixpath.isabs(uri):
            uri = posixpath.join(base, uri)
        yield ImageRef(uri, event_time, _segment(row))


def _required(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("event_time is empty; fill it or drop the column to use file times")
    return value


def _segment(row: Mapping[str, Any]) -> str:
    value = row.get("segment")
    return "" if value is None else str(value).strip()


def _manifest_rows(manifest: str) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(row, None) for each row, or ({}, why) for a JSON line that is not an object."""
    fs, path = fsspec.core.url_to_fs(manifest)
    fs.invalidate_cache(posixpath.dirname(path))  # rewritten since an earlier run in this process read it
    with fs.open(path, "rb") as file:
        if manifest.lower().endswith(".parquet"):
            for batch in pq.ParquetFile(file).iter_batches(batch_size=10_000):
                for row in batch.to_pylist():
                    yield row, None
        elif manifest.lower().endswith(".csv"):
            for row in csv.DictReader(io.TextIOWrapper(file, encoding="utf-8", newline="")):
                yield row, None
        else:
            for line in io.TextIOWrapper(file, encoding="utf-8"):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield {}, f"not JSON ({error})"
                    continue
                yield (row, None) if isinstance(row, dict) else ({}, f"a JSON {type(row).__name__}, not an object")
