"""Window-partitioned Parquet tables, written atomically and idempotently through the output store.

Each (table, window, source) is one file (see :mod:`pipelines.store`). Re-running the same SOURCE replaces its
file for every window it touches, in every table, so a retried or re-run window leaves the same rows and never
duplicates, nor keeps stale ones: a window whose images are all rejected now gets an empty scores file, and one
whose images all score now an empty rejected file. Different SOURCEs writing into one OUT keep separate files.

Rows never gather in one process. The workers that finish them write them to shards in the run's staging folder
of OUT, and only the shards' paths are grouped by window; one step per window then reads its shards, writes every
table's partition, and computes the derived tables (the windows table's statistics) from the rows it read.
Grouping the rows themselves sent every scored row of the run through the local runner's launcher (bench/scale.py,
20,000 to 40,000 rows: the process tree's peak RSS 1.08x then, 1.03x with shards, though that run also decoded at
reduced scale), and statistics combined by Beam sent each (window, segment)'s sketches through it. A bundle's
paths reach the grouping only when the runner commits the bundle, so the shards of a failed and retried bundle are
never read; the launcher removes the staging folder after the run.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
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

# Finished rows a worker holds before writing them to shards. With the features kept (1,280 floats a row, about
# 40 KB as Python objects) that is under 100 MB; a time-ordered feed has one or two windows open at a time, so a
# shard holds about this many rows and a window of 5,000 images is read back from a few.
SHARD_ROWS = 2_000
# The columns that order a partition's rows, where its table has them: a re-run writes the same bytes.
_ROW_ORDER = ("segment", "score", "uri", "event_time", "stage", "reason", "error")

DerivedTable = Callable[[str, Mapping[str, pa.Table]], pa.Table]
"""(window label, the window's rows of every staged table, ordered) -> a table computed from them."""


class WriteTables(beam.PTransform):
    """``{table: PCollection of (label, row)}`` -> one Parquet file per (table, window) for this source, for every
    window the run touched (with no rows where a table has none), and for the rejected table also its partition of
    unknown time, which holds this run's whole list of images whose time could not be read.

    Args:
        store: OUT.
        schemas: each table's schema, derived ones included.
        part: the source's key, which names its file in every partition.
        staging: this run's staging folder under OUT (:meth:`OutputStore.remove_staging` removes it after the run).
        derived: tables computed per window from the staged ones (the windows table's statistics), in the step that
            writes the window, so what they are computed from never crosses the launcher.
        replaces: the source's keys in earlier versions, whose files the new ones replace.

    Returns:
        The labels of the windows written, one each (the partition of unknown time is not one).
    """

    def __init__(
        self,
        store: OutputStore,
        *,
        schemas: Mapping[str, pa.Schema],
        part: str,
        staging: str,
        derived: Mapping[str, DerivedTable] | None = None,
        replaces: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self._store = store
        self._schemas = dict(schemas)
        self._part = part
        self._staging = staging
        self._derived = dict(derived or {})
        self._replaces = replaces

    def expand(self, tables: Mapping[str, beam.PCollection]) -> beam.PCollection:
        # Every run writes its partition of unknown time, empty when all times were read, so an earlier run's list
        # of such images does not outlive the run that fixed them.
        unknown = tables[REJECTED].pipeline | "UnknownTime" >> beam.Create([(window_label(None), None)])
        shards = [
            rows
            | f"Stage{table}" >> beam.ParDo(StageShards(self._store, table, self._schemas[table], self._staging))
            | f"Tag{table}" >> beam.MapTuple(lambda label, path, table=table: (label, (table, path)))
            for table, rows in tables.items()
        ]
        return (
            (*shards, unknown)
            | "AllShards" >> beam.Flatten()
            | "ByWindow" >> beam.GroupByKey()
            | "WriteWindows"
            >> beam.ParDo(WritePartition(self._store, self._schemas, self._derived, self._part, self._replaces))
        )


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
    """(window label, its staged shards as (table, path); None marks the partition of unknown time) -> one Parquet
    file per table in that window's partition, the derived tables' included; yields the label of a window written.

    The partition of unknown time holds only rejections: every other table's rows have a window.
    """

    def __init__(
        self,
        store: OutputStore,
        schemas: Mapping[str, pa.Schema],
        derived: Mapping[str, DerivedTable],
        part: str,
        replaces: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self._schemas = dict(schemas)
        self._derived = dict(derived)
        self._staged = tuple(table for table in schemas if table not in derived)
        self._part = part
        self._replaces = replaces
        self._rows_written = {table: Metrics.counter("gradwatch", f"{table}_rows_written") for table in schemas}

    def process(self, element: tuple[str, Iterable[tuple[str, str] | None]]) -> Iterator[str]:
        label, tagged = element
        shards: defaultdict[str, list[str]] = defaultdict(list)
        for table, path in (shard for shard in tagged if shard is not None):
            shards[table].append(path)
        unknown_time = label == window_label(None)
        rows = {
            table: ordered(self._store.read_staged(sorted(shards[table]), self._schemas[table]))
            for table in ((REJECTED,) if unknown_time else self._staged)
        }
        for table, table_rows in rows.items():
            self._write(table, label, table_rows)
        if unknown_time:
            return
        for table, derive in self._derived.items():
            self._write(table, label, ordered(derive(label, rows).cast(self._schemas[table])))
        yield label

    def _write(self, table: str, label: str, rows: pa.Table) -> None:
        self._store.write_partition(table, label, rows, part=self._part, replaces=self._replaces)
        self._rows_written[table].inc(rows.num_rows)


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
