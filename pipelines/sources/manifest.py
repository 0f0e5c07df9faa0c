"""A manifest: a .csv, .parquet or .jsonl file with a row per image (uri, and optionally event_time and segment).

Read row by row; a row that cannot be used becomes a rejection naming the row and the fix, and the rest go on.
Relative URIs resolve against the manifest's folder, so a folder can carry its own manifest.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import posixpath
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from pipelines.records import ImageRef, Rejected
from pipelines.redaction import redact
from pipelines.sources import (
    Source,
    SourceError,
    canonical_uri,
    in_time_range,
    printable_uri,
    register_source,
)
from pipelines.times import object_mtime, parse_event_time

SUFFIXES = (".csv", ".parquet", ".jsonl")
# Rows of a JSON-lines manifest looked at for a uri, at check: a bad first row is one rejection, not a refusal.
_ROWS_CHECKED = 100


@register_source
class ManifestSource(Source):
    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.lower().endswith(SUFFIXES)

    def check(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.uri)
        shown = redact(self.uri)
        if not fs.isfile(path):
            raise SourceError(f"manifest {shown!r} does not exist; pass an existing .csv, .parquet or .jsonl file")
        columns = _columns(self.uri)
        if columns is not None and "uri" not in columns:
            # Every row would be rejected: a run would monitor nothing and look healthy.
            raise SourceError(
                f"manifest {shown!r} has no uri column (its columns: {', '.join(sorted(columns)) or 'none'}); "
                "name the column of image locations uri"
            )

    def list(self) -> Iterator[ImageRef | Rejected]:
        return _with_file_times(manifest_entries(self.uri))

    def count_listed(self, since: dt.datetime | None, until: dt.datetime | None) -> int:
        # A duplicate is a rejection with its row's time, counted as the row would be: the count needs no duplicate
        # check, which held 134 MB at its peak over a million rows, beside the pipeline's own listing.
        entries = _with_file_times(manifest_entries(self.uri, check_duplicates=False))
        return sum(1 for entry in entries if in_time_range(entry, since, until))

    def listing(self) -> beam.PTransform:
        return beam.Create([self.uri]) | "Rows" >> beam.FlatMap(manifest_entries)


def _with_file_times(entries: Iterator[ImageRef | Rejected]) -> Iterator[ImageRef | Rejected]:
    """``entries``, each ref without an event time given its file's modification time; a ref whose file is gone
    for good is left out, for the pipeline to reject with its reason when its window is scored."""
    for entry in entries:
        if isinstance(entry, ImageRef) and entry.event_time is None:
            fs, path = fsspec.core.url_to_fs(entry.uri)
            try:
                entry = ImageRef(entry.uri, object_mtime(fs.info(path)), entry.segment)
            except OSError as error:
                from pipelines.read import is_permanent_read_failure  # read's own classification, not a cycle

                if not is_permanent_read_failure(error):
                    raise  # planned without it, its window could look empty, and its outputs be removed
                continue
        yield entry


def manifest_entries(manifest: str, *, check_duplicates: bool = True) -> Iterator[ImageRef | Rejected]:
    """Each manifest row as an image ref, or as a rejection saying what is wrong with the row.

    A row naming an image an earlier row named (under any spelling of its path) is rejected as a duplicate: an
    image is scored once per source, and still accounted for. Without ``check_duplicates`` such a row is a ref
    like the first: for counting, which then holds nothing per row.
    """
    base = posixpath.dirname(canonical_uri(manifest))
    shown = redact(manifest)
    first_row: dict[bytes, int] = {}
    for row_number, (raw_uri, has_time, raw_time, raw_segment, unreadable) in enumerate(
        _manifest_rows(manifest), start=1
    ):
        uri = str(raw_uri or "").strip()
        if uri and "://" not in uri and not uri.startswith("/"):
            uri = posixpath.join(base, uri)
        uri = _canonical(uri) if uri else uri
        segment = "" if raw_segment is None else str(raw_segment).strip()
        problem = None
        event_time = None
        if unreadable:
            problem = ("bad_row", f"{shown} row {row_number}: {unreadable}; write one JSON object per line")
        elif not uri:
            problem = ("missing_uri", f"{shown} row {row_number} has no uri; every manifest row needs one")
        elif printable_uri(uri) != uri:
            uri = printable_uri(uri)
            problem = (
                "bad_name",
                f"{shown} row {row_number}: {uri} is not UTF-8, which the tables cannot store; write it in UTF-8",
            )
        elif has_time:
            try:
                event_time = parse_event_time(_required(raw_time))
            except ValueError as error:
                problem = ("bad_event_time", f"{shown} row {row_number} ({_identity(uri)}): {error}")
        named = _identity(uri) if uri else f"{shown} row {row_number}"
        if problem is None and check_duplicates:
            # 16 bytes of digest a row: about 120 MB a million rows, with the dict's own overhead.
            identity = hashlib.blake2b(named.encode(), digest_size=16).digest()
            if identity in first_row:
                problem = (
                    "duplicate",
                    f"{shown} row {row_number} names {named!r} again (row {first_row[identity]}); drop the row",
                )
            else:
                first_row[identity] = row_number
        if problem is not None:
            reason, message = problem
            yield Rejected(named, event_time, "manifest", reason, message, segment)
            continue
        yield ImageRef(uri, event_time, segment)


def _canonical(uri: str) -> str:
    """``canonical_uri``, without its cost for an absolute path that is normalised already, as a manifest's usually
    are: a million rows pay it twice in planning and again in the listing."""
    if (
        uri.startswith("/")
        and "//" not in uri
        and "/./" not in uri
        and "/../" not in uri
        and not uri.endswith(("/", "/.", "/.."))
    ):
        return uri
    return canonical_uri(uri)


def _identity(canonical: str) -> str:
    """``image_identity`` of a canonical URI: only a URL with a user or a query can hold credentials to strip."""
    return redact(canonical) if "@" in canonical or "=" in canonical else canonical


def _required(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("event_time is empty; fill it or drop the column to use file times")
    return value


# A row as what is read of it: (uri, whether it has an event_time field, event_time, segment, why it is unreadable).
_Row = tuple[Any, bool, Any, Any, str | None]


def _manifest_rows(manifest: str) -> Iterator[_Row]:
    """Each row's fields, or (None, False, None, None, why) for a JSON line that is not an object."""
    fs, path = fsspec.core.url_to_fs(manifest)
    fs.invalidate_cache(posixpath.dirname(path))  # rewritten since an earlier run in this process read it
    with fs.open(path, "rb") as file:
        if manifest.lower().endswith(".parquet"):
            yield from _parquet_rows(file)
        elif manifest.lower().endswith(".csv"):
            yield from _csv_rows(file)
        else:
            for row, unreadable in _json_lines(file):
                if unreadable is None:
                    yield row.get("uri"), "event_time" in row, row.get("event_time"), row.get("segment"), None
                else:
                    yield None, False, None, None, unreadable


def _json_lines(file: Any) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(object, None) for each line, or ({}, why) for a line that is not a JSON object."""
    for line in io.TextIOWrapper(file, encoding="utf-8", errors="surrogateescape"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield {}, f"not JSON ({error})"
            continue
        yield (row, None) if isinstance(row, dict) else ({}, f"a JSON {type(row).__name__}, not an object")


def _parquet_rows(file: Any) -> Iterator[_Row]:
    parquet = pq.ParquetFile(file)
    names = set(parquet.schema_arrow.names)
    wanted = [name for name in ("uri", "event_time", "segment") if name in names]
    has_time = "event_time" in names
    for batch in parquet.iter_batches(batch_size=10_000, columns=wanted):
        rows = len(batch)
        uris, times, segments = (
            batch.column(name).to_pylist() if name in names else [None] * rows
            for name in ("uri", "event_time", "segment")
        )
        for uri, event_time, segment in zip(uris, times, segments, strict=True):
            yield uri, has_time, event_time, segment, None


def _csv_rows(file: Any) -> Iterator[_Row]:
    # Bytes that are not UTF-8 kept as surrogates, so that the row is rejected by name, not the manifest.
    text = io.TextIOWrapper(file, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    # As csv.DictReader reads a row (which costs twice as much a row): the last column of a name wins, a short
    # row's missing fields are None, blank lines are no rows.
    column = {name: index for index, name in enumerate(header)}
    uri_at, time_at, segment_at = (column.get(name, -1) for name in ("uri", "event_time", "segment"))
    has_time = time_at >= 0
    for values in reader:
        if not values:
            continue
        count = len(values)
        yield (
            values[uri_at] if 0 <= uri_at < count else None,
            has_time,
            values[time_at] if 0 <= time_at < count else None,
            values[segment_at] if 0 <= segment_at < count else None,
            None,
        )


def _columns(manifest: str) -> set[str] | None:
    """The manifest's column names (a JSON-lines manifest's: its first row's keys); None when it has no rows."""
    fs, path = fsspec.core.url_to_fs(manifest)
    if manifest.lower().endswith(".parquet"):
        with fs.open(path, "rb") as file:
            return set(pq.ParquetFile(file).schema_arrow.names)
    if manifest.lower().endswith(".csv"):
        with fs.open(path, "rb") as file:
            header = next(
                csv.reader(io.TextIOWrapper(file, encoding="utf-8", errors="surrogateescape", newline="")), None
            )
            return set(header) if header else None
    # A JSON-lines manifest has no header: it has a uri column when any of its first rows has one.
    seen: set[str] = set()
    with fs.open(path, "rb") as file:
        for row_number, (row, _) in enumerate(_json_lines(file)):
            seen |= set(row)
            if "uri" in seen or row_number >= _ROWS_CHECKED:
                break
    return seen or None
