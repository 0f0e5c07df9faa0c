"""Event-time windows, and per-window statistics of every score: exact moments and a mergeable KLL sketch.

Partial results from many workers merge exactly (count, mean, variance by Chan et al.'s parallel
formula, min, max) or within the sketch's rank error (quantiles), so an hour's windows can be regrouped
into a day without rescoring.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from datasketches import kll_doubles_sketch

from pipelines.records import QUANTILES, REJECTED, Rejected
from pipelines.times import window_label

# k = 200 gives about 1.65% normalized rank error (DataSketches KLL docs), and is exact below ~200 values.
SKETCH_K = 200


@dataclass
class ScoreStats:
    """Mergeable summary of one score's values."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    min: float = math.inf
    max: float = -math.inf
    sketch: kll_doubles_sketch = field(default_factory=lambda: kll_doubles_sketch(SKETCH_K))

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.sketch.update(value)

    def merge(self, other: ScoreStats) -> None:
        if other.n == 0:
            return
        total = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / total
        self.m2 += other.m2 + delta * delta * self.n * other.n / total
        self.n = total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sketch.merge(other.sketch)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1), NaN below two values."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else math.nan

    def quantiles(self) -> dict[str, float]:
        if self.n == 0:
            return {name: math.nan for name in QUANTILES}
        # Inclusive ranks: p50 of an odd count is the middle value, as numpy's "inverted_cdf".
        return {name: self.sketch.get_quantile(q, inclusive=True) for name, q in QUANTILES.items()}

    # The sketch is a C++ object: Beam moves accumulators between workers as bytes.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "sketch": self.sketch.serialize()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**state, "sketch": kll_doubles_sketch.deserialize(state["sketch"])})


@dataclass
class WindowAccumulator:
    n_rejected: int = 0
    scores: dict[str, ScoreStats] = field(default_factory=dict)


class WindowStatsFn(beam.CombineFn):
    """Combines a (window, segment)'s inputs: a mapping of measured values (scores, image properties) per scored
    image, None per rejection. A NaN value (a property that does not apply) is left out: ``n`` counts the others."""

    def __init__(self, score_names: tuple[str, ...]) -> None:
        self._score_names = score_names

    def create_accumulator(self) -> WindowAccumulator:
        return WindowAccumulator(scores={name: ScoreStats() for name in self._score_names})

    def add_input(self, accumulator: WindowAccumulator, element: Mapping[str, float] | None) -> WindowAccumulator:
        if element is None:
            accumulator.n_rejected += 1
        else:
            for name in self._score_names:
                value = float(element[name])
                if math.isfinite(value):  # a property that does not apply (a PNG's JPEG quality) is NaN
                    accumulator.scores[name].add(value)
        return accumulator

    def merge_accumulators(self, accumulators: Iterator[WindowAccumulator]) -> WindowAccumulator:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged.n_rejected += accumulator.n_rejected
            for name in self._score_names:
                merged.scores[name].merge(accumulator.scores[name])
        return merged

    def extract_output(self, accumulator: WindowAccumulator) -> WindowAccumulator:
        return accumulator


def window_rows(
    segment: str, accumulator: WindowAccumulator, window_end: dt.datetime, model_id: str
) -> Iterator[dict[str, Any]]:
    """One windows-table row per score (see :data:`pipelines.records.WINDOWS_SCHEMA`)."""
    for name, stats in accumulator.scores.items():
        empty = stats.n == 0
        yield {
            "window_end": window_end,
            "segment": segment,
            "score": name,
            "n": stats.n,
            "n_rejected": accumulator.n_rejected,
            "mean": math.nan if empty else stats.mean,
            "std": stats.std,
            "min": math.nan if empty else stats.min,
            "max": math.nan if empty else stats.max,
            **stats.quantiles(),
            "sketch": stats.sketch.serialize(),
            "model_id": model_id,
        }


class WindowTables(beam.PTransform):
    """(scored rows, rejections) -> each table's rows keyed by their window's partition label.

    Rows and rejections go into event-time fixed windows; each (window, segment) is combined into one windows-table
    row per score. Rejections of unknown time go to the ``unknown`` partition of ``rejected`` and into no window.

    Returns:
        ``{"scores": ..., "windows": ..., "rejected": ...}``, PCollections of (label, row) in the global window.
    """

    def __init__(self, *, window: dt.timedelta, columns: Sequence[str], model_id: str) -> None:
        super().__init__()
        self._window_seconds = window.total_seconds()
        self._columns = tuple(columns)
        self._model_id = model_id

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> dict[str, beam.PCollection]:
        scored_rows, rejected = inputs
        names, windows = self._columns, beam_window.FixedWindows(self._window_seconds)
        scored = (
            scored_rows
            | "ScoresEventTime"
            >> beam.Map(lambda row: beam_window.TimestampedValue(row, row["event_time"].timestamp()))
            | "ScoresWindows" >> beam.WindowInto(windows)
        )
        rejected_timed = (
            rejected
            | "KnownTime" >> beam.Filter(lambda rejection: rejection.event_time is not None)
            | "RejectedEventTime"
            >> beam.Map(lambda rejection: beam_window.TimestampedValue(rejection, rejection.event_time.timestamp()))
            | "RejectedWindows" >> beam.WindowInto(windows)
        )
        statistics = (
            (
                scored | "ScoresBySegment" >> beam.Map(lambda row: (row["segment"], {n: row[n] for n in names})),
                rejected_timed | "RejectedBySegment" >> beam.Map(lambda rejection: (rejection.segment, None)),
            )
            | "StatsInputs" >> beam.Flatten()
            | "Combine" >> beam.CombinePerKey(WindowStatsFn(names))
            | "StatsRows" >> beam.ParDo(_LabelWindowRows(self._model_id))
        )
        rejected_rows = (
            rejected_timed
            | "LabelRejected" >> beam.ParDo(_LabelByWindow())
            | "RejectedToGlobal" >> beam.WindowInto(beam_window.GlobalWindows()),
            rejected
            | "UnknownTime" >> beam.Filter(lambda rejection: rejection.event_time is None)
            | "LabelUnknown" >> beam.Map(lambda rejection: (window_label(None), rejected_row(rejection))),
        ) | "AllRejectedRows" >> beam.Flatten()
        to_global = beam_window.GlobalWindows()
        return {
            "scores": scored
            | "LabelScores" >> beam.ParDo(_LabelByWindow())
            | "ScoresToGlobal" >> beam.WindowInto(to_global),
            "windows": statistics | "WindowsToGlobal" >> beam.WindowInto(to_global),
            REJECTED: rejected_rows,
        }


def rejected_row(rejection: Rejected) -> dict[str, Any]:
    """A rejected-table row, counting the rejection by stage and reason for the run's reconciliation."""
    Metrics.counter("gradwatch", f"rejected/{rejection.stage}/{rejection.reason}").inc()
    return {
        "uri": rejection.uri,
        "event_time": rejection.event_time,
        "segment": rejection.segment,
        "stage": rejection.stage,
        "reason": rejection.reason,
        "error": rejection.error,
    }


class _LabelByWindow(beam.DoFn):
    """Row (or rejection) -> (its window's partition label, row)."""

    def process(self, element: Any, window: beam_window.IntervalWindow = beam.DoFn.WindowParam):
        row = rejected_row(element) if isinstance(element, Rejected) else element
        yield window_label(window.start.to_utc_datetime(has_tz=True)), row


class _LabelWindowRows(beam.DoFn):
    def __init__(self, model_id: str) -> None:
        self._model_id = model_id

    def process(self, element, window: beam_window.IntervalWindow = beam.DoFn.WindowParam):
        segment, accumulator = element
        label = window_label(window.start.to_utc_datetime(has_tz=True))
        for row in window_rows(segment, accumulator, window.end.to_utc_datetime(has_tz=True), self._model_id):
            yield label, row
