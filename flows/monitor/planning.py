"""Which windows a run processes: the watermark of processed windows, and SOURCE's images by window.

The watermark (``OUT/_state/watermark.json``) records each processed window with a fingerprint of its images, so a
restart resumes where it stopped, a processed window is not processed again, and late images for a processed
window change its fingerprint and get it re-processed (idempotently: its outputs, decision and alerts are replaced
or deduplicated, never doubled).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from flows.monitor.config import MonitorConfig
from pipelines.records import ImageRef
from pipelines.redaction import redact
from pipelines.sources import Source
from pipelines.store import OutputStore
from pipelines.times import PlausibleTimes, floor_to_window, parse_window_label, window_label

log = logging.getLogger("gradwatch.monitor")


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
    _warn_of_a_feed_that_ended(config, images, planned)
    return planned


def _warn_of_a_feed_that_ended(
    config: MonitorConfig, images: Mapping[dt.datetime, list[ImageRef]], planned: Sequence[dt.datetime]
) -> None:
    """Once per run: the run goes on for ``reminder_every`` or more past SOURCE's last image, as a one-off run over a
    historical feed does up to now. Its silence pages once (the policy paces reminders by the runs' clocks), but
    the run still records every empty window, and ``--until`` stops it where the feed stopped. A scheduled run
    over a live feed that goes dark plans one window at a time, and is not told to stop."""
    last = max((ref.event_time for refs in images.values() for ref in refs), default=None)
    if last is None:
        return
    after = [start for start in planned if start > last]
    if len(after) < 2 or after[-1] + config.window - after[0] < config.reminder_every:
        return
    # --until is floored to a window: the end of the last image's window keeps that window in.
    until = floor_to_window(last, config.window) + config.window
    log.warning(
        "the last image in %s is from %s: this run processes %d windows after it (%s to %s), with no images; "
        "this run pages that silence once at most. If the feed has ended, pass --until %s to stop there",
        redact(config.source),
        last.isoformat(),
        len(after),
        window_label(after[0]),
        window_label(after[-1]),
        until.isoformat(),
    )


def scoring_runs(
    planned: Sequence[dt.datetime], images: Mapping[dt.datetime, list[ImageRef]], config: MonitorConfig
) -> list[list[dt.datetime]]:
    """The planned windows with images, in runs of consecutive planned windows that one pipeline run scores.

    A run never spans a window that is not planned (its outputs are current and stay as they are); an empty
    planned window has nothing to score and does not break one. A run stops before
    ``config.images_per_scoring_run`` images.
    """
    runs: list[list[dt.datetime]] = []
    images_in_run = 0
    extendable = False
    previous: dt.datetime | None = None
    for start in planned:
        extendable = extendable and previous is not None and start - previous == config.window
        previous = start
        count = len(images.get(start, []))
        if not count:
            continue
        if extendable and images_in_run + count <= config.images_per_scoring_run:
            runs[-1].append(start)
            images_in_run += count
        else:
            runs.append([start])
            images_in_run = count
            extendable = True
    return runs
