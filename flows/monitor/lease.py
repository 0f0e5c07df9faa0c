"""One monitor per OUT at a time: a lease kept in the output store, beside the watermark it protects.

Two monitors on one OUT (a schedule and a manual run, or an orchestrator's retry while the first still runs) would
each process the same windows and each deliver the outbox: a slow receiver got every alert twice. The lease names
its holder and expires; the holder renews it while it runs, so a run killed with ``kill -9`` holds OUT for at most
``ttl`` more, and the run that takes over learns which MLflow run it left RUNNING, to mark it failed.

fsspec offers no compare-and-swap that works on every store, so a lease is written, left to settle, and read back:
the run goes on only if it still names it. Two runs that start within the settling pause of each other are told
apart (the later write wins, and the earlier writer sees it); two that start further apart see each other's lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from pipelines.store import OutputStore
from scoring import GradwatchError

LEASE = "lease"
_LOG = logging.getLogger("gradwatch.monitor")


class MonitorBusyError(GradwatchError):
    """Another monitor holds OUT; the message says which, and until when."""


class LeaseLostError(GradwatchError):
    """This run stopped renewing its lease long enough for another run to take OUT over."""


class Lease:
    """The right to process and page for one OUT, renewed in the background while held."""

    def __init__(self, store: OutputStore, *, ttl: dt.timedelta, settle_s: float = 1.0) -> None:
        """
        Args:
            store: OUT.
            ttl: how long a lease lasts unrenewed: a killed run blocks OUT this long at most. It is renewed every
                third of it, so a run is never taken over while it is alive.
            settle_s: the pause between writing the lease and reading it back (see the module's notes).
        """
        self.store = store
        self.ttl = ttl
        self.settle_s = settle_s
        self.owner = uuid.uuid4().hex
        self.mlflow_run_id = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost = False
        self._taken_over: dict[str, Any] | None = None

    def acquire(self, *, wait: dt.timedelta = dt.timedelta(0)) -> dict[str, Any] | None:
        """Take OUT, waiting up to ``wait`` for a live holder to finish.

        Returns:
            The expired lease this run took over (a run that was killed: its ``mlflow_run_id`` is still RUNNING),
            or None.

        Raises:
            MonitorBusyError: a live run holds OUT after ``wait``.
        """
        deadline = time.monotonic() + wait.total_seconds()
        while True:
            held = self.store.load_state(LEASE)
            if held is not None and held.get("owner") == self.owner:
                return self._taken_over  # a retried step of the run that holds it
            if held is not None and not _expired(held):
                if time.monotonic() >= deadline:
                    raise MonitorBusyError(_busy(self.store, held))
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
                continue
            self._write()
            time.sleep(self.settle_s)
            now_held = self.store.load_state(LEASE)
            if now_held is not None and now_held.get("owner") == self.owner:
                break
            if now_held is not None and time.monotonic() >= deadline:
                raise MonitorBusyError(_busy(self.store, now_held))
        self._renewer = threading.Thread(target=self._renew, name="gradwatch-lease", daemon=True)
        self._renewer.start()
        self._taken_over = held
        return held

    @property
    def held(self) -> bool:
        """Whether this run took the lease and has not lost or released it (as far as it knows)."""
        return self._renewer is not None and not self._stop.is_set() and not self._lost

    def record_run(self, mlflow_run_id: str) -> None:
        """Note the MLflow run this holder opened, for the run that takes over if this one is killed."""
        self.mlflow_run_id = mlflow_run_id
        self._write()

    def check(self) -> None:
        """Raises LeaseLostError when another run has taken OUT over: nothing more may be written or paged."""
        held = self.store.load_state(LEASE)
        if self._lost or held is None or held.get("owner") != self.owner:
            self._lost = True
            raise LeaseLostError(
                f"this monitor lost its lease on {self.store.url()} (another run took it over after it went "
                f"{self.ttl} without renewing); its windows are left to that run"
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.store.load_state(LEASE)
        if held is not None and held.get("owner") == self.owner:
            self.store.delete_state(LEASE)

    def _write(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.store.save_state(
            LEASE,
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "renewed_at": now.isoformat(),
                "expires_at": (now + self.ttl).isoformat(),
                "mlflow_run_id": self.mlflow_run_id,
            },
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            try:
                held = self.store.load_state(LEASE)
                if held is None or held.get("owner") != self.owner:
                    self._lost = True
                    return
                self._write()
            except Exception as error:  # a blip of the store: the next renewal, a third of the lease later, retries
                _LOG.warning("could not renew the monitor's lease on %s: %s", self.store.url(), error)


def _expired(held: dict[str, Any]) -> bool:
    try:
        return dt.datetime.fromisoformat(held["expires_at"]) <= dt.datetime.now(dt.UTC)
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: no live run could have written it


def _busy(store: OutputStore, held: dict[str, Any]) -> str:
    return (
        f"another monitor holds {store.url()} (host {held.get('host')}, pid {held.get('pid')}, renewed "
        f"{held.get('renewed_at')}, lease until {held.get('expires_at')}); let it finish, or, if it was killed, "
        "run again after its lease expires"
    )
