"""Event time and windows: parsing times and durations, aligning to windows, and the windows' partition labels.

Windows are fixed, aligned to the epoch, and divide a day (or are whole days), so they align to midnight UTC and
every process computes the same boundaries.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNKNOWN_WINDOW = "unknown"  # partition of rejected images whose event time could not be read

_DURATION = re.compile(r"(\d+)\s*(d|h|min|m|s)")
_UNITS = {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}
LABEL_FORMAT = "%Y-%m-%dT%H-%M-%SZ"


def parse_event_time(value: Any) -> dt.datetime:
    """ISO-8601 (a naive time is taken as UTC) or epoch seconds; epochs above 1e11 are milliseconds.

    Raises:
        ValueError: with the value in the message.
    """
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"event_time {text!r} is neither ISO-8601 (2026-11-26T13:05:00Z) nor epoch seconds"
                ) from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if not math.isfinite(seconds):
        raise ValueError(f"event_time {value!r} is not a finite epoch")
    # Milliseconds since the epoch (Kafka, JavaScript) would be past the year 5000 read as seconds.
    if abs(seconds) > 1e11:
        seconds /= 1000.0
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):  # past the year 9999, or beyond the platform's time_t
        raise ValueError(f"event_time {value!r} is not a time any image can have (past the year 9999)") from None


@dataclass(frozen=True)
class PlausibleTimes:
    """The event times an image can really have. Anything outside is a broken clock or field, rejected with its
    reason and never planned: an epoch of 0 accepted as 1970 would plan half a million empty windows."""

    # Before 2000 is a clock that was never set (epoch 0 or -1, a camera's 1980 default) or a unit read wrongly.
    earliest: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    # A day ahead of now covers clock skew and a time zone written as UTC; later is a clock set wrongly.
    ahead: dt.timedelta = dt.timedelta(days=1)

    def __post_init__(self) -> None:
        if self.earliest.tzinfo is None:
            raise ValueError(f"earliest plausible event time {self.earliest} needs a time zone (UTC)")
        if self.ahead < dt.timedelta(0):
            raise ValueError(f"plausible event times ahead of now ({self.ahead}) cannot be negative")

    def latest(self, now: dt.datetime | None = None) -> dt.datetime:
        return (now or dt.datetime.now(dt.UTC)) + self.ahead

    def problem(self, moment: dt.datetime, *, now: dt.datetime | None = None) -> str | None:
        """Why ``moment`` is not a plausible event time, or None when it is."""
        if moment < self.earliest:
            return (
                f"event time {moment.isoformat()} is before {self.earliest.date()}: a clock that was never set or "
                "an epoch in the wrong unit; fix the image's time, or lower the earliest plausible event time"
            )
        latest = self.latest(now)
        if moment > latest:
            return (
                f"event time {moment.isoformat()} is after {latest.isoformat(timespec='seconds')}, more than "
                f"{self.ahead} ahead of now; fix the clock that stamped it"
            )
        return None


def object_mtime(info: Mapping[str, Any]) -> dt.datetime:
    """Modification time from an fsspec ``info``/``ls`` record, whichever filesystem produced it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        if info.get(key) is not None:
            return parse_event_time(info[key])
    raise ValueError(f"no modification time in the listing of {info.get('name')!r}; use a manifest with event_time")


def parse_window(text: str) -> dt.timedelta:
    """``"1h"``, ``"30m"``/``"30min"``, ``"1d"``, ``"90s"``, ``"1h30m"`` -> timedelta."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(f"window {text!r} is not a duration like 1h, 30m, 1d or 90s")
    seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0 or (86400 % seconds and seconds % 86400):
        raise ValueError(f"window {text!r} must divide a day or be whole days, so windows align to midnight UTC")
    return dt.timedelta(seconds=seconds)


def floor_to_window(moment: dt.datetime, window: dt.timedelta) -> dt.datetime:
    """The start of the window that holds ``moment``."""
    size = window.total_seconds()
    return dt.datetime.fromtimestamp(math.floor(moment.timestamp() / size) * size, dt.UTC)


def align_to_windows(
    since: dt.datetime | None, until: dt.datetime | None, window: dt.timedelta
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Widen [since, until) to whole windows: a window is the unit that is written, replaced and tested."""
    aligned_until = None
    if until is not None:
        aligned_until = floor_to_window(until, window)
        if aligned_until < until:
            aligned_until += window
    return (floor_to_window(since, window) if since is not None else None), aligned_until


def window_label(window_start: dt.datetime | None) -> str:
    """The Hive partition value of a window: ``2026-11-26T13-00-00Z`` (no colons: object-store safe)."""
    if window_start is None:
        return UNKNOWN_WINDOW
    return window_start.astimezone(dt.UTC).strftime(LABEL_FORMAT)


def parse_window_label(label: str) -> dt.datetime:
    return dt.datetime.strptime(label, LABEL_FORMAT).replace(tzinfo=dt.UTC)


def parse_plausible(earliest: str | None) -> PlausibleTimes:
    """The plausible range from an operator's earliest event time (ISO-8601 or epoch); the default without one.

    Raises:
        ValueError: it does not parse, naming it.
    """
    return PlausibleTimes(earliest=parse_event_time(earliest)) if earliest else PlausibleTimes()
