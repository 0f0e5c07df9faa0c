"""Window-partitioned Parquet tables, written atomically and idempotently through the output store.

Each (table, window, source) is one file (see :mod:`pipelines.store`). Re-running the same SOURCE replaces its
file for every window it touches, in every table, so a retried or re-run window leaves the same rows and never
duplicates, nor keeps stale ones: a window whose images are all rejected now gets an empty scores file, and one
whose images all score now an empty rejected file. Different SOURCEs writing into one OUT keep separate files.

Rows never gather in one process. The workers that finish them write them to shards in the run's staging folder
of OUT, and only the shards' paths are grouped by window; one step per (table, window) then reads its shards and
writes the partition. Grouping the rows themselves sent every scored row of the run through the local runner's
launcher (bench/scale.py, 20,000 to 40,000 rows: the process tree's peak RSS 1.08x then, 1.03x with shards, though
that run also decoded at reduced scale). A bundle's paths reach the grouping only when the runner commits the
bundle, so the shards of a failed and retried bundle are never read; the launcher removes the staging folder after
the run.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.records import REJECTED
from pipelines.store import OutputStore
from pipelines.times import window_label

# Every window with a scored or rejected image has a windows row: those are the windows a run touches.
_TOUCHING_TABLE = "windows"
# Finished rows a worker holds before writing them to shards. With the features kept (1,280 floats a row, about
# 40 KB as Python objects) that is under 100 MB; a time-ordered feed has one or two windows open at a time, so a
# shard holds about this many rows and a window of 5,000 images is read back from a few.
SHARD_ROWS = 2_000
# The columns that order a partition's rows, where its table has them: a re-run writes the same bytes.
_ROW_ORDER = ("segment", "score", "uri", "event_time", "stage", "reason", "error")


class WriteTables(beam.PTransform):
    """``{table: PCollection of (label, row)}`` -> one Parquet file per (table, window) for this source, for every
    window the run touched (with no rows where a table has none), and for the rejected table also its partition of
    unknown time, which holds this run's whole list of images whose time could not be read.

    Args:
        store: OUT.
        schemas: each table's schema.
        part: the source's key, which names its file in every partition.
        staging: this run's staging folder under OUT (:meth:`OutputStore.remove_staging` removes it after the run).
        replaces: the source's keys in earlier versions, whose files the new ones replace.
    """

    def __init__(
        self,
        store: OutputStore,
        *,
        schemas: Mapping[str, pa.Schema],
        part: str,
        staging: str,
        replaces: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self._store = store
        self._schemas = dict(schemas)
        self._part = part
        self._staging = staging
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
            schema = self._schemas[table]
            labels = (touched, unknown) | f"Labels{table}" >> beam.Flatten() if table == REJECTED else touched
            shards = rows | f"Stage{table}" >> beam.ParDo(StageShards(self._store, table, schema, self._staging))
            written[table] = (
                {"shards": shards, "touched": labels}
                | f"Group{table}" >> beam.CoGroupByKey()
                | f"Shards{table}" >> beam.Map(lambda grouped: (grouped[0], grouped[1]["shards"]))
                | f"Write{table}" >> beam.ParDo(WritePartition(self._store, table, schema, self._part, self._replaces))
            )
        return written


class StageShards(beam.DoFn):
    """(window label, row) -> (window label, path of a staged shard holding it), at most :data:`SHARD_ROWS` rows
    held at a time."""

    def __init__(self, store: OutputStore, table: str, schema: pa.Schema, staging: str) -> None:
        self._store = store
        self._table = table
        self._schema = schema
        self._staging = staging

    def start_bundle(self) -> None:
        self._held: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._count = 0

    def process(self, element: tuple[str, dict[str, Any]]) -> Iterator[tuple[str, str]]:
        label, row = element
        self._held[label].append(row)
        self._count += 1
        if self._count >= SHARD_ROWS:
            yield from self._write_held()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for shard in self._write_held():
            yield GlobalWindows.windowed_value(shard)

    def _write_held(self) -> Iterator[tuple[str, str]]:
        for label, rows in self._held.items():
            shard = pa.Table.from_pylist(rows, schema=self._schema)
            yield label, self._store.write_staged(self._staging, self._table, label, uuid.uuid4().hex, shard)
        self._held.clear()
        self._count = 0


class WritePartition(beam.DoFn):
    """(window label, paths of its staged shards) -> one Parquet file in that window's partition; yields the label."""

    def __init__(
        self, store: OutputStore, table: str, schema: pa.Schema, part: str, replaces: tuple[str, ...] = ()
    ) -> None:
        self._store = store
        self._table = table
        self._schema = schema
        self._part = part
        self._replaces = replaces
        self._rows_written = Metrics.counter("gradwatch", f"{table}_rows_written")

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator[str]:
        label, shards = element
        rows = self._store.read_staged(sorted(shards), self._schema)
        self._store.write_partition(self._table, label, ordered(rows), part=self._part, replaces=self._replaces)
        self._rows_written.inc(rows.num_rows)
        yield label


def ordered(rows: pa.Table) -> pa.Table:
    """``rows`` in the order of :data:`_ROW_ORDER`, whichever shards and workers they came from, in one chunk (a
    table's chunks can change how Parquet splits its pages)."""
    keys = {
        name: pc.fill_null(rows[name], "") if pa.types.is_string(rows.schema.field(name).type) else rows[name]
        for name in _ROW_ORDER
        if name in rows.column_names
    }
    order = pc.sort_indices(pa.table(keys), sort_keys=[(name, "ascending") for name in keys])
    return rows.take(order).combine_chunks()
