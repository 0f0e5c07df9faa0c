"""OUT, the one place every output lives: its layout, and atomic writes through fsspec for any filesystem.

    OUT/<table>/window_start=<label>/part-<source key>.parquet   scores, windows, rejected, decisions
    OUT/_staging/<run>/<table>/<label>/<shard>.parquet            rows a scoring run is writing (pipelines.sinks)
    OUT/_state/watermark.json                                     windows processed, and their images' fingerprints
    OUT/_state/lease.json                                         the monitor that holds OUT now (flows.monitor.lease)
    OUT/alerts/outbox/<alert>.json, OUT/alerts/delivered/...      alerts waiting for delivery, and delivered ones
    OUT/alerts/state.json                                         open drift episodes per segment
    OUT/report.html                                               the drift report

Every write is atomic: on an object store (s3://, gs://, az://), which has no rename, the object is written whole,
so readers see the old object or the new one, never a part; on any other filesystem (a local disk, HDFS, SFTP) a
hidden temporary is renamed into place. Readers skip hidden names, so a run killed midway leaves nothing they
would read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import posixpath
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.times import LABEL_FORMAT, UNKNOWN_WINDOW, window_label
from pipelines.uris import canonical_uri

AlertState = Literal["outbox", "delivered"]
# Filesystems without an atomic rename, where an object is written whole instead; every other one renames.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss", "memory"}
# A temporary this old is a killed run's; a writer renames its own within seconds.
_STALE_TEMPORARY_S = 600
_STAGING = "_staging"
_STATE_DOCUMENTS = {
    "watermark": "_state/watermark.json",
    "alert_policy": "alerts/state.json",
    "lease": "_state/lease.json",
    "sequential": "_state/sequential.json",
}


class OutputStore:
    """Reads and writes OUT (a local folder or any fsspec URL) through one filesystem.

    Picklable as its URL alone, so Beam can ship it to workers; each process opens its own filesystem. A relative
    OUT is pickled absolute: an SDK worker resolves paths against its own working directory, and wrote a
    launcher's ``--out out`` under the worker pool's (the portable run of tests/pipelines/test_portable.py).
    """

    def __init__(self, out: str) -> None:
        self.out = out.rstrip("/") or out

    def __getstate__(self) -> dict[str, Any]:
        return {"out": canonical_uri(self.out)}

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

    def write_partition(
        self, table: str, label: str, rows: pa.Table, *, part: str, replaces: tuple[str, ...] = ()
    ) -> None:
        """Write one (table, window, part) file, replacing what a previous run of the same part wrote, and of the
        parts in ``replaces`` (the same source's files under the keys of an earlier version)."""
        buffer = pa.BufferOutputStream()
        pq.write_table(rows, buffer, compression="zstd")
        self._write_bytes(
            self.path(table, f"window_start={label}", f"part-{part}.parquet"), buffer.getvalue().to_pybytes()
        )
        for former in replaces:
            self.remove_partition(table, label, part=former)

    def remove_partition(self, table: str, label: str, *, part: str) -> None:
        """Remove one (table, window, part) file, when the window has no rows left at all."""
        path = self.path(table, f"window_start={label}", f"part-{part}.parquet")
        if self.fs.exists(path):
            self.fs.rm(path)

    def read_table(self, table: str, *, upgrade: Callable[[pa.Table], pa.Table] | None = None) -> pa.Table:
        """A whole table with ``window_start`` as a UTC timestamp (null for rejections of unknown time).

        Args:
            table: ``scores``, ``windows``, ``rejected``, ``decisions``.
            upgrade: applied to each file's rows before they are put together, to bring files an older version
                wrote to today's schema.

        Returns:
            The rows of every window with the columns of every file (a window scored after a score was added has
            one more; the others read it as null); an empty table when nothing was written yet.
        """
        root = self.path(table)
        self.fs.invalidate_cache(root)  # another process may have written since this one listed
        files = sorted(
            path
            for path in (self.fs.find(root) if self.fs.exists(root) else [])
            if path.endswith(".parquet") and not posixpath.basename(path).startswith(".")
        )
        if not files:
            return pa.table({})

        def read(path: str) -> pa.Table:
            rows = pq.read_table(path, filesystem=self.fs)
            rows = upgrade(rows) if upgrade else rows
            label = posixpath.basename(posixpath.dirname(path)).removeprefix("window_start=")
            return rows.append_column("window_start", pa.array([label] * rows.num_rows, pa.string()))

        # Object stores answer each file in a round trip: a few in flight at once.
        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = pa.concat_tables(list(pool.map(read, files)), promote_options="default")
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
        if part:
            return pq.read_table(target, filesystem=self.fs)
        files = sorted(
            path for path in self.fs.ls(folder, detail=False) if not posixpath.basename(path).startswith(".")
        )
        if not files:  # every part removed (a window whose images all went)
            return pa.table({})
        return pa.concat_tables([pq.read_table(path, filesystem=self.fs) for path in files], promote_options="default")

    # -- a scoring run's staged shards ---------------------------------------------------------------

    def write_staged(self, staging: str, table: str, label: str, shard: str, rows: pa.Table) -> str:
        """Write one shard of a run's rows for (table, window); returns its path. Not atomic: a shard is read only
        once the bundle that wrote it has committed, and a bundle that failed midway leaves it unread."""
        path = self.path(_STAGING, staging, table, label, f"{shard}.parquet")
        if not self._is_object_store:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        pq.write_table(rows, path, filesystem=self.fs, compression="zstd")
        return path

    def read_staged(self, shards: list[str], schema: pa.Schema) -> pa.Table:
        """The rows of ``shards`` (paths :meth:`write_staged` returned) together; empty with ``schema`` for none."""
        tables = [pq.read_table(path, filesystem=self.fs, schema=schema) for path in shards]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def remove_staging(self, staging: str) -> None:
        """Remove a run's staging folder, with the shards of any bundle that failed and was retried."""
        folder = self.path(_STAGING, staging)
        self.fs.invalidate_cache(folder)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)
        if not self._is_object_store:
            # An object store has no empty folders; a local one would keep an empty _staging in OUT after every run.
            # rmdir refuses a folder another run is staging into, which is the only case it must leave alone.
            with contextlib.suppress(OSError):
                self.fs.rmdir(self.path(_STAGING))

    # -- state documents ------------------------------------------------------------------------------

    def load_state(self, name: str) -> Any:
        """A state document (``watermark``, ``alert_policy``), or None before the first run wrote it."""
        return self._read_json(self.path(_STATE_DOCUMENTS[name]))

    def save_state(self, name: str, document: Any) -> None:
        self._write_bytes(self.path(_STATE_DOCUMENTS[name]), json.dumps(document, indent=1, sort_keys=True).encode())

    def delete_state(self, name: str) -> None:
        path = self.path(_STATE_DOCUMENTS[name])
        if self.fs.exists(path):
            self.fs.rm(path)

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
        self.fs.invalidate_cache(self.path("alerts", state))  # another run may have delivered it since
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

    @cached_property
    def _is_object_store(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return bool(set(protocols) & _OBJECT_STORES)

    def _read_json(self, path: str) -> Any:
        try:
            with self.fs.open(path, "rb") as file:
                return json.loads(file.read())
        except FileNotFoundError:
            return None

    def _write_bytes(self, path: str, data: bytes) -> None:
        folder, name = posixpath.split(path)
        if self._is_object_store:
            # Written whole (one PUT, or a multipart upload above 100 MB that appears at once): an object store shows
            # the old object or the new one, and its "rename" is a copy, no better.
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        with self.fs.open(temporary, "wb") as file:
            file.write(data)
        self.fs.mv(temporary, path)
        # Temporaries a run killed between writing and renaming left; a young one is another writer's, mid-write.
        stale_before = time.time() - _STALE_TEMPORARY_S
        for leftover, info in self.fs.glob(posixpath.join(folder, f".{name}.*.tmp"), detail=True).items():
            modified = info.get("mtime") or info.get("created")
            if modified is not None and float(modified) < stale_before:
                with contextlib.suppress(FileNotFoundError):  # another writer swept it first
                    self.fs.rm(leftover)
