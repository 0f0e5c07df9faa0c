"""Reading the pipeline's window-partitioned tables back."""

from __future__ import annotations

import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines.records import UNKNOWN_WINDOW

TABLES = ("scores", "windows", "rejected")


def read_table(out: str, table: str) -> pa.Table:
    """A whole table with ``window_start`` as a UTC timestamp (null for rejections of unknown time).

    Args:
        out: the OUT the pipeline wrote to (local path or fsspec URL).
        table: ``scores``, ``windows`` or ``rejected``.

    Returns:
        The rows of every window; an empty table when nothing was written yet.
    """
    if table not in TABLES:
        raise ValueError(f"table {table!r} is not one of {TABLES}")
    fs, root = fsspec.core.url_to_fs(posixpath.join(out.rstrip("/"), table))
    if not fs.exists(root):
        return pa.table({})
    partitioning = ds.partitioning(pa.schema([("window_start", pa.string())]), flavor="hive")
    rows = ds.dataset(root, filesystem=fs, format="parquet", partitioning=partitioning).to_table()
    labels = rows.column("window_start")
    known = pc.if_else(pc.equal(labels, UNKNOWN_WINDOW), pa.scalar(None, pa.string()), labels)
    starts = pc.strptime(known, format="%Y-%m-%dT%H-%M-%SZ", unit="us").cast(pa.timestamp("us", tz="UTC"))
    return rows.set_column(rows.schema.get_field_index("window_start"), "window_start", starts)
