"""Window-partitioned Parquet tables, written atomically and idempotently through the output store.

Each (table, window, source) is one file (see :mod:`pipelines.store`). Re-running the same SOURCE replaces its
file for every window it touches, in every table, so a retried or re-run window leaves the same rows and never
duplicates, nor keeps stale ones: a window whose images are all rejected now gets an empty scores file, and one
whose images all score now an empty rejected file. Different SOURCEs writing into one OUT keep separate files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipelines.records import REJECTED
from pipelines.store import OutputStore
from pipelines.times import window_label

# Every window with a scored or rejected image has a windows row: those are the windows a run touches.
_TOUCHING_TABLE = "windows"


class WriteTables(beam.PTransform):
    """``{table: PCollection of (label, row)}`` -> one Parquet file per (table, window) for this source, for every
    window the run touched (with no rows where a table has none), and for the rejected table also its partition of
    unknown time, which holds this run's whole list of images whose time could not be read."""

    def __init__(
        self, store: OutputStore, *, schemas: Mapping[str, pa.Schema], part: str, replaces: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        self._store = store
        self._schemas = dict(schemas)
        self._part = part
        self._replaces = replaces

    def expand(self, tables: Mapping[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        touched = (
            tables[_TOUCHING_TABLE]
            | "TouchedWindows" >> beam.Keys()
            | "EachTouchedOnce" >> beam.Distinct()
            | "AsTouched" >> beam.Map(lambda label: (label, None))
        )
        unknown = tables[REJECTED].pipeline | "UnknownTime" >> beam.Create([(window_label(None), None)])
        written = {}
        for table, rows in tables.items():
            labels = (touched, unknown) | f"Labels{table}" >> beam.Flatten() if table == REJECTED else touched
            written[table] = (
                {"rows": rows, "touched": labels}
                | f"Group{table}" >> beam.CoGroupByKey()
                | f"Rows{table}" >> beam.Map(lambda grouped: (grouped[0], grouped[1]["rows"]))
                | f"Write{table}"
                >> beam.ParDo(WritePartition(self._store, table, self._schemas[table], self._part, self._replaces))
            )
        return written


class WritePartition(beam.DoFn):
    """(window label, rows) -> one Parquet file in that window's partition; yields the label."""

    def __init__(
        self, store: OutputStore, table: str, schema: pa.Schema, part: str, replaces: tuple[str, ...] = ()
    ) -> None:
        self._store = store
        self._table = table
        self._schema = schema
        self._part = part
        self._replaces = replaces
        self._rows_written = Metrics.counter("gradwatch", f"{table}_rows_written")

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        label, rows = element
        # Sorted so a re-run writes byte-for-byte the same rows in the same order.
        ordered = sorted(rows, key=_row_order)
        self._store.write_partition(
            self._table,
            label,
            pa.Table.from_pylist(ordered, schema=self._schema),
            part=self._part,
            replaces=self._replaces,
        )
        self._rows_written.inc(len(ordered))
        yield label


def _row_order(row: dict[str, Any]) -> tuple:
    return (row.get("segment") or "", row.get("score") or "", row.get("uri") or "", str(row.get("event_time")))
