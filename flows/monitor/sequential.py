"""The CUSUM charts of every segment across windows, kept with the outputs (``OUT/_state/sequential.json``).

Each window's evidence per chart is stored with the charts' values after it, by window, so that deciding a window
again (a retry, late images, ``--reprocess``) starts from the window before it and carries the change through the
windows after it: evidence is never counted twice. It carries the charts' state only: a signal the change would add
to or remove from a later window is not paged or withdrawn, and that window's decision row stays as decided (the
next window reads the corrected charts). Charts belong to one threshold version: the evidence of another
version's references says nothing about this one's, so a new version starts them from zero, with a burn-in of its
own (see :mod:`scoring.sequential`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from pipelines.store import OutputStore
from pipelines.times import window_label
from scoring.drift import WindowDecision
from scoring.sequential import ChartState, ChartStep, Cusum, window_evidence

log = logging.getLogger("gradwatch.monitor")

# Windows kept: a week of hourly windows, more than a chart accumulates over before it signals or falls back to
# zero, and a state document of a few megabytes at most.
KEPT_WINDOWS = 168


class SequentialCharts:
    """Every segment's charts, as the windows decided so far left them."""

    def __init__(self, store: OutputStore, cusum: Cusum, threshold_version: str) -> None:
        self.store = store
        self.cusum = cusum
        self.version = threshold_version
        document = store.load_state("sequential") or {}
        same = document.get("threshold_version") == threshold_version
        self.windows: dict[str, dict[str, Any]] = document.get("windows", {}) if same else {}

    def update(self, window_start: dt.datetime, decision: WindowDecision) -> dict[str, ChartStep]:
        """Record this window's evidence and return each tested segment's charts after it; saved at once."""
        label = window_label(window_start)
        tested = [segment for segment in decision.n if segment not in decision.insufficient_segments]
        kept = sorted(self.windows)
        if kept and label < kept[0] and len(kept) >= KEPT_WINDOWS:
            log.warning("window %s is older than the sequential charts keep; it leaves them as they are", label)
            return {}
        self.windows[label] = {
            segment: {"evidence": _rounded(window_evidence(decision.tests, segment))} for segment in tested
        }
        steps = self._recompute_from(label)
        for old in sorted(self.windows)[:-KEPT_WINDOWS]:
            del self.windows[old]
        self.store.save_state("sequential", {"threshold_version": self.version, "windows": self.windows})
        return {segment: steps[segment] for segment in tested if segment in steps}

    def _recompute_from(self, label: str) -> dict[str, ChartStep]:
        """Carry every segment's charts from the window before ``label`` through ``label`` and every window after it;
        returns the steps of ``label``."""
        labels = sorted(self.windows)
        start = labels.index(label)
        last: dict[str, ChartState] = {}
        for earlier in labels[:start]:
            for segment, entry in self.windows[earlier].items():
                last[segment] = ChartState.from_dict(entry.get("state"))
        steps = {}
        for current in labels[start:]:
            for segment, entry in self.windows[current].items():
                step = self.cusum.step(last.get(segment, ChartState()), entry["evidence"])
                state = dataclasses.replace(step.state, statistics=_rounded(step.state.statistics))
                entry.update(
                    state=state.to_dict(), statistic=step.statistic, chart=step.chart, signalled=step.signalled
                )
                last[segment] = state
                if current == label:
                    steps[segment] = step
        return steps


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    """To 4 decimals: a chart's limit is a few units, and the document is rewritten every window."""
    return {name: round(value, 4) for name, value in values.items()}
