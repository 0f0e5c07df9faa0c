"""Reading the pipeline's window-partitioned tables back."""

from __future__ import annotations

import datetime as dt
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines.records import UNKNOWN_WINDOW, window_label
from pipelines.sinks import partition_path, source_key


def read_table(out: str, table: str) -> pa.Table:
    """A whole table with ``window_start`` as a UTC timestamp (null for rejections of unknown time).

    Args:
        out: the OUT the pipeline wrote to (local path or fsspec URL).
        table: ``scores``, ``windows``, ``rejected``, or another window-partitioned table under OUT
            (the monitor's ``decisions``).

    Returns:
        The rows of every window; an empty table when nothing was written yet.
    """
    fs, root = fsspec.core.url_to_fs(posixpath.join(out.rstrip("/"), table))
    if not fs.exists(root):
        return pa.table({})
    partitioning = ds.partitioning(pa.schema([("window_start", pa.string())]), flavor="hive")
    rows = ds.dataset(root, filesystem=fs, format="parquet", partitioning=partitioning).to_table()
    labels = rows.column("window_start")
    known = pc.if_else(pc.equal(labels, UNKNOWN_WINDOW), pa.scalar(None, pa.string()), labels)
    starts = pc.strptime(known, format="%Y-%m-%dT%H-%M-%SZ", unit="us").cast(pa.timestamp("us", tz="UTC"))
    return rows.set_column(rows.schema.get_field_index("window_start"), "window_start", starts)


def read_window(out: str, table: str, window_start: dt.datetime, *, source: str | None = None) -> pa.Table:
    """One window's rows of a table, optionally only those one SOURCE wrote; empty when there are none."""
    fs, folder = fsspec.core.url_to_fs(partition_path(out, table, window_label(window_start)))
    if not fs.exists(folder):
        return pa.table({})
    files = [posixpath.join(folder, f"part-{source_key(source)}.parquet")] if source else None
    if files and not fs.exists(files[0]):
        return pa.table({})
    dataset = ds.dataset(files or folder, filesystem=fs, format="parquet")
    return dataset.to_table()
