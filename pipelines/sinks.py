"""Window-partitioned Parquet tables, written atomically and idempotently.

Each (table, window, source) is one file, ``OUT/<table>/window_start=<label>/part-<source key>.parquet``,
written under a hidden temporary name and renamed into place. Re-running the same SOURCE replaces its
file for every window it touches, so a retried or re-run window leaves the same rows and never
duplicates; a run killed midway leaves only hidden temporaries, which readers skip and the next write
removes. Different SOURCEs writing into one OUT keep separate files.
"""

from __future__ import annotations

import hashlib
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics


def source_key(source: str) -> str:
    """A file-name-safe key naming the SOURCE, stable across runs."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def partition_path(out: str, table: str, label: str) -> str:
    return posixpath.join(out.rstrip("/"), table, f"window_start={label}")


class WritePartition(beam.DoFn):
    """(window label, rows) -> one Parquet file in that window's partition; yields the label."""

    def __init__(self, out: str, table: str, schema: pa.Schema, source: str) -> None:
        self._out = out
        self._table = table
        self._schema = schema
        self._file_name = f"part-{source_key(source)}.parquet"
        self._rows_written = Metrics.counter("gradwatch", f"{table}_rows_written")

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        label, rows = element
        # Sorted so a re-run writes byte-for-byte the same rows in the same order.
        ordered = sorted(rows, key=_row_order)
        table = pa.Table.from_pylist(ordered, schema=self._schema)
        fs, folder = fsspec.core.url_to_fs(partition_path(self._out, self._table, label))
        fs.makedirs(folder, exist_ok=True)
        final = posixpath.join(folder, self._file_name)
        temporary = posixpath.join(folder, f".{self._file_name}.{uuid.uuid4().hex}.tmp")
        with fs.open(temporary, "wb") as file:
            pq.write_table(table, file, compression="zstd")
        fs.mv(temporary, final)
        for leftover in fs.glob(posixpath.join(folder, f".{self._file_name}.*.tmp")):
            fs.rm(leftover)  # from a run killed between writing and renaming
        self._rows_written.inc(len(ordered))
        yield label


def _row_order(row: dict[str, Any]) -> tuple:
    return (row.get("segment") or "", row.get("score") or "", row.get("uri") or "", str(row.get("event_time")))
