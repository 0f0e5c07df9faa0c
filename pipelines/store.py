"""OUT, the one place every output lives: its layout, and atomic writes through fsspec for any filesystem.

    OUT/<table>/window_start=<label>/part-<source key>.parquet   scores, windows, rejected, decisions
    OUT/_state/watermark.json                                     windows processed, and their images' fingerprints
    OUT/alerts/outbox/<alert>.json, OUT/alerts/delivered/...      alerts waiting for delivery, and delivered ones
    OUT/alerts/state.json                                         open drift episodes per segment
    OUT/report.html                                               the drift report

Every write is atomic: where the filesystem renames (a local disk) a hidden temporary is renamed into place; where
it does not (s3://, gs://, az://) the object is written whole in one request, so readers see the old object or the
new one, never a part. Readers skip hidden names, so a run killed midway leaves nothing they would read.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import uuid
from functools import cached_property
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipelines.times import LABEL_FORMAT, UNKNOWN_WINDOW, window_label

TABLES = ("scores", "windows", "rejected", "decisions")
AlertState = Literal["outbox", "delivered"]
_STATE_DOCUMENTS = {"watermark": "_state/watermark.json", "alert_policy": "alerts/state.json"}


class OutputStore:
    """Reads and writes OUT (a local folder or any fsspec URL) through one filesystem.

    Picklable as its URL alone, so Beam can ship it to workers; each process opens its own filesystem.
    """

    def __init__(self, out: str) -> None:
        self.out = out.rstrip("/") or out

    def __getstate__(self) -> dict[str, Any]:
        return {"out": self.out}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.out = state["out"]

    def __repr__(self) -> str:
        return f"OutputStore({self.out!r})"

    @cached_property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(self.out)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_root[0]

    def path(self, *parts: str) -> str:
        """A path under OUT, as the filesystem names it."""
        return posixpath.join(self._fs_root[1], *parts)

    def url(self, *parts: str) -> str:
        """A path under OUT as a user would write it (with its scheme), for messages."""
        return posixpath.join(self.out, *parts)

    # -- window-partitioned tables --------------------------------------------------------------------

    def write_partition(self, table: str, label: str, rows: pa.Table, *, part: str) -> None:
        """Write one (table, window, part) file, replacing what a previous run of the same part wrote."""
        buffer = pa.BufferOutputStream()
        pq.write_table(rows, buffer, compression="zstd")
        self._write_bytes(
            self.path(table, f"window_start={label}", f"part-{part}.parquet"), buffer.getvalue().to_pybytes()
        )

    def read_table(self, table: str) -> pa.Table:
        """A whole table with ``window_start`` as a UTC timestamp (null for rejections of unknown time).

        Returns:
            The rows of every window; an empty table when nothing was written yet.
        """
        root = self.path(table)
        self.fs.invalidate_cache(root)  # another process may have written since this one listed
        if not self.fs.exists(root):
            return pa.table({})
        partitioning = ds.partitioning(pa.schema([("window_start", pa.string())]), flavor="hive")
        dataset = ds.dataset(root, filesystem=self.fs, format="parquet", partitioning=partitioning)
        # Every file's columns, not the first one's: windows scored after a score was added have one more.
        files = [fragment.physical_schema for fragment in dataset.get_fragments()]
        if not files:
            return pa.table({})
        schema = pa.unify_schemas([*files, pa.schema([("window_start", pa.string())])])
        rows = ds.dataset(
            root, filesystem=self.fs, format="parquet", partitioning=partitioning, schema=schema
        ).to_table()
        labels = rows.column("window_start")
        known = pc.if_else(pc.equal(labels, UNKNOWN_WINDOW), pa.scalar(None, pa.string()), labels)
        starts = pc.strptime(known, format=LABEL_FORMAT, unit="us").cast(pa.timestamp("us", tz="UTC"))
        return rows.set_column(rows.schema.get_field_index("window_start"), "window_start", starts)

    def read_window(self, table: str, window_start: dt.datetime, *, part: str | None = None) -> pa.Table:
        """One window's rows of a table, optionally only one part's (one SOURCE's); empty when there are none."""
        folder = self.path(table, f"window_start={window_label(window_start)}")
        target = posixpath.join(folder, f"part-{part}.parquet") if part else folder
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(target):
            return pa.table({})
        return ds.dataset(target, filesystem=self.fs, format="parquet").to_table()

    # -- state documents ------------------------------------------------------------------------------

    def load_state(self, name: str) -> Any:
        """A state document (``watermark``, ``alert_policy``), or None before the first run wrote it."""
        return self._read_json(self.path(_STATE_DOCUMENTS[name]))

    def save_state(self, name: str, document: Any) -> None:
        self._write_bytes(self.path(_STATE_DOCUMENTS[name]), json.dumps(document, indent=1, sort_keys=True).encode())

    # -- alerts ---------------------------------------------------------------------------------------

    def alert_names(self, state: AlertState) -> list[str]:
        """Names of the alerts in the outbox or among the delivered ones, in name order."""
        folder = self.path("alerts", state)
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return []
        names = (posixpath.basename(path) for path in self.fs.ls(folder, detail=False))
        return sorted(name for name in names if name.endswith(".json") and not name.startswith("."))

    def has_alert(self, state: AlertState, name: str) -> bool:
        return self.fs.exists(self.path("alerts", state, name))

    def read_alert(self, state: AlertState, name: str) -> dict[str, Any]:
        return self._read_json(self.path("alerts", state, name))

    def write_alert(self, state: AlertState, name: str, entry: dict[str, Any]) -> None:
        self._write_bytes(self.path("alerts", state, name), json.dumps(entry).encode())

    def remove_alert(self, state: AlertState, name: str) -> None:
        path = self.path("alerts", state, name)
        if self.fs.exists(path):
            self.fs.rm(path)

    # -- files ----------------------------------------------------------------------------------------

    def write_file(self, name: str, data: bytes) -> str:
        """Write a file at OUT/``name`` (the report); returns its URL."""
        self._write_bytes(self.path(name), data)
        return self.url(name)

    # -- atomic writes --------------------------------------------------------------------------------

    def _read_json(self, path: str) -> Any:
        try:
            with self.fs.open(path, "rb") as file:
                return json.loads(file.read())
        except FileNotFoundError:
            return None

    def _write_bytes(self, path: str, data: bytes) -> None:
        folder, name = posixpath.split(path)
        if not isinstance(self.fs, LocalFileSystem):
            # One PUT: an object store shows the old object or the new one, and has no rename to do better.
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        with self.fs.open(temporary, "wb") as file:
            file.write(data)
        self.fs.mv(temporary, path)
        for leftover in self.fs.glob(posixpath.join(folder, f".{name}.*.tmp")):
            self.fs.rm(leftover)  # from a run killed between writing and renaming
