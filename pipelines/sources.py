"""Listing a SOURCE (folder, prefix or manifest) into image references, without reading image bytes.

A folder is listed in two steps so the work spreads over workers: its top level on one worker, then each
sub-folder on whichever worker takes it. A manifest is read row by row; a row that cannot be used
becomes a rejection and the rest go on.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from fsspec.implementations.local import LocalFileSystem

from pipelines.records import ImageRef, Rejected
from scoring import GradwatchError

MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl")
SUBTREE = "subtree"
REJECTED = "rejected"


class SourceError(GradwatchError):
    """SOURCE cannot be listed; the message says what to pass instead."""


def check_source(source: str) -> None:
    """Fail before a pipeline starts when SOURCE is not there.

    Raises:
        SourceError: naming SOURCE and what it must be.
    """
    fs, path = fsspec.core.url_to_fs(source)
    if is_manifest(source) and not fs.isfile(path):
        raise SourceError(f"manifest {source!r} does not exist; pass an existing .csv, .parquet or .jsonl file")
    if not is_manifest(source) and not fs.isdir(path):
        raise SourceError(
            f"SOURCE {source!r} is not a folder, prefix or manifest ({', '.join(MANIFEST_SUFFIXES)}); "
            "check the path, or install the fsspec filesystem for its URL scheme (s3fs, gcsfs, adlfs)"
        )


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES)


def parse_event_time(value: Any) -> dt.datetime:
    """ISO-8601 (a naive time is taken as UTC) or epoch seconds; epochs above 1e11 are milliseconds.

    Raises:
        ValueError: with the value in the message.
    """
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"event_time {text!r} is neither ISO-8601 (2026-11-26T13:05:00Z) nor epoch seconds"
                ) from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if not math.isfinite(seconds):
        raise ValueError(f"event_time {value!r} is not a finite epoch")
    # Milliseconds since the epoch (Kafka, JavaScript) would be past the year 5000 read as seconds.
    if abs(seconds) > 1e11:
        seconds /= 1000.0
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def object_mtime(info: Mapping[str, Any]) -> dt.datetime:
    """Modification time from an fsspec ``info``/``ls`` record, whichever filesystem produced it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        if info.get(key) is not None:
            return parse_event_time(info[key])
    raise ValueError(f"no modification time in the listing of {info.get('name')!r}; use a manifest with event_time")


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return any(part.startswith(".") for part in relative.split("/"))


class ExpandSource(beam.DoFn):
    """SOURCE -> image refs of its top level (main), sub-folders (``subtree``), manifest rejections."""

    def __init__(self) -> None:
        self._listed = Metrics.counter("gradwatch", "listed")

    def process(self, source: str) -> Iterator[Any]:
        if is_manifest(source):
            for entry in manifest_entries(source):
                if isinstance(entry, Rejected):
                    self._listed.inc()
                    yield beam.pvalue.TaggedOutput(REJECTED, entry)
                else:
                    yield entry
            return
        fs, root = fsspec.core.url_to_fs(source)
        if not fs.isdir(root):
            raise FileNotFoundError(
                f"SOURCE {source!r} is not a folder, prefix or manifest ({', '.join(MANIFEST_SUFFIXES)})"
            )
        for info in fs.ls(root, detail=True):
            name = info["name"]
            if _hidden(name, root):
                continue
            if info["type"] == "directory":
                yield beam.pvalue.TaggedOutput(SUBTREE, _uri(fs, name))
            else:
                yield ImageRef(_uri(fs, name), object_mtime(info))


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
            uri = posixpath.join(base, uri)  # relative to the manifest, so a folder can carry its own
        yield ImageRef(uri, event_time, _segment(row))


def list_source(source: str) -> Iterator[ImageRef | Rejected]:
    """Every image of SOURCE in one process, with event times resolved; for planning, not for scoring.

    The pipeline lists in parallel instead; this is what the monitor uses to see which windows have images.
    """
    if is_manifest(source):
        for entry in manifest_entries(source):
            if isinstance(entry, ImageRef) and entry.event_time is None:
                fs, path = fsspec.core.url_to_fs(entry.uri)
                try:
                    entry = ImageRef(entry.uri, object_mtime(fs.info(path)), entry.segment)
                except FileNotFoundError:
                    continue  # the pipeline rejects it with its reason when the window is scored
            yield entry
        return
    fs, root = fsspec.core.url_to_fs(source)
    for name, info in sorted(fs.find(root, detail=True).items()):
        if info["type"] != "directory" and not _hidden(name, root):
            yield ImageRef(_uri(fs, name), object_mtime(info))


def _required(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("event_time is empty; fill it or drop the column to use file times")
    return value


def _segment(row: Mapping[str, Any]) -> str:
    value = row.get("segment")
    return "" if value is None else str(value).strip()


def _manifest_rows(manifest: str) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(row, None) for each row, or ({}, why) for a JSON line that is not an object."""
    with fsspec.open(manifest, "rb") as file:
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


class ListSubtree(beam.DoFn):
    """A sub-folder -> refs of every file under it."""

    def process(self, folder: str) -> Iterator[ImageRef]:
        fs, root = fsspec.core.url_to_fs(folder)
        for name, info in sorted(fs.find(root, detail=True).items()):
            if info["type"] != "directory" and not _hidden(name, root):
                yield ImageRef(_uri(fs, name), object_mtime(info))
