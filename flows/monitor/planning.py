"""Which windows a run processes: the watermark of processed windows, and SOURCE's images by window.

The watermark (``OUT/_state/watermark.json``) records each processed window with a fingerprint of its images, so a
restart resumes where it stopped, a processed window is not processed again, and late images for a processed
window change its fingerprint and get it re-processed (idempotently: its outputs, decision and alerts are replaced
or deduplicated, never doubled).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from flows.monitor.config import MonitorConfig
from pipelines.records import ImageRef
from pipelines.sources import Source
from pipelines.store import OutputStore
from pipelines.times import PlausibleTimes, floor_to_window, parse_window_label, window_label


class Watermark:
    """Processed windows and the fingerprint of the images each had, kept with the outputs."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self.windows: dict[str, dict[str, Any]] = store.load_state("watermark") or {}

    def is_current(self, window_start: dt.datetime, fingerprint: str) -> bool:
        return self.windows.get(window_label(window_start), {}).get("fingerprint") == fingerprint

    def segments(self, window_start: dt.datetime) -> set[str]:
        """Segments that sent images in a processed window (empty when it was not processed)."""
        return set(self.windows.get(window_label(window_start), {}).get("segments", []))

    def forget_before(self, earliest: dt.datetime) -> None:
        """Drop windows before ``earliest``: processed when their images' times were read as 1970, say."""
        kept = {label: entry for label, entry in self.windows.items() if parse_window_label(label) >= earliest}
        if len(kept) < len(self.windows):
            self.windows = kept
            self.store.save_state("watermark", self.windows)

    def mark(self, window_start: dt.datetime, fingerprint: str, status: str, segments: set[str]) -> None:
        self.windows[window_label(window_start)] = {
            "fingerprint": fingerprint,
            "status": status,
            "segments": sorted(segments),
            "processed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.store.save_state("watermark", self.windows)


def inventory(
    source: Source, window: dt.timedelta, plausible: PlausibleTimes = PlausibleTimes()
) -> dict[dt.datetime, list[ImageRef]]:
    """SOURCE's images by window start. Entries that cannot be placed (manifest rows without a usable time, times
    no image can have) are left to the pipeline, which rejects them with their reasons."""
    by_window: dict[dt.datetime, list[ImageRef]] = defaultdict(list)
    for entry in source.list():
        if isinstance(entry, ImageRef) and plausible.problem(entry.event_time) is None:
            by_window[floor_to_window(entry.event_time, window)].append(entry)
    return dict(by_window)


def fingerprint(refs: Sequence[ImageRef]) -> str:
    listing = sorted(f"{ref.uri}|{ref.event_time.isoformat()}|{ref.segment}" for ref in refs)
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def plan_windows(
    config: MonitorConfig, images: Mapping[dt.datetime, list[ImageRef]], watermark: Watermark, now: dt.datetime
) -> list[dt.datetime]:
    """Complete windows in [since, until) that are new, changed (late images), or to be re-processed."""
    last_complete = floor_to_window(now, config.window)  # the window that contains now is still filling
    until = min(floor_to_window(config.until, config.window), last_complete) if config.until else last_complete
    if config.since:
        start = max(
            floor_to_window(config.since, config.window), floor_to_window(config.plausible.earliest, config.window)
        )
    else:
        known = [parse_window_label(label) for label in watermark.windows]
        start = min([*known, *images], default=None)
    if start is None:
        return []
    planned = []
    moment = start
    while moment < until:
        current = watermark.is_current(moment, fingerprint(images.get(moment, [])))
        if config.reprocess or not current:
            planned.append(moment)
        moment += config.window
    return planned
