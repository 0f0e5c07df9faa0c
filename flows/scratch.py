"""Temporary folders a run owns: removed when it ends, however it ends, and swept by a later run if it was killed.

A folder is named ``gradwatch-<purpose>-<pid>-<host>-<random>`` in the temp folder. SIGKILL gives a run no chance
to clean up, so making a folder first removes those of the same purpose whose owner on this host is no longer alive.
A live run's folder is never removed: its pid answers (a reused pid only keeps a stale folder longer), and folders
from another host sharing the temp folder, or from versions that did not name their owner, are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def owned_temp_dir(purpose: str) -> Iterator[Path]:
    """A new folder for this run, removed on exit or error, after sweeping the ones killed runs left."""
    sweep_stale(purpose)
    folder = Path(tempfile.mkdtemp(prefix=f"gradwatch-{purpose}-{os.getpid()}-{_host()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_stale(purpose: str) -> list[Path]:
    """Remove the ``purpose`` folders whose owning process on this host has ended; returns what was removed."""
    owned = re.compile(rf"gradwatch-{re.escape(purpose)}-(\d+)-{re.escape(_host())}-")
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"gradwatch-{purpose}-*"):
        match = owned.match(folder.name)
        if match and folder.is_dir() and not _alive(int(match.group(1))):
            # Another run may be sweeping the same folder at the same time.
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _host() -> str:
    # No "-" in it, so the name splits back into purpose, pid and host.
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "localhost"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid this system has: keep it
        return True
    return True
