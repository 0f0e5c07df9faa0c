"""Event-time windows, and per-window statistics of every score: exact moments and a mergeable KLL sketch.

The statistics are computed from a window's rows in the step that writes them, not combined by Beam: a combine's
partial results cross the local runner's launcher, whose memory then grew with the feed (bench/scale.py). The
sketches still merge within their rank error, so an hour's windows can be regrouped into a day without rescoring.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from datasketches import kll_doubles_sketch

from pipelines.records import QUANTILES, REJECTED, WINDOWS_SCHEMA, Rejected
from pipelines.times import parse_window_label, window_label

# k = 200 gives about 1.65% normalized rank error (DataSketches KLL docs), and is exact below ~200 values.
SKETCH_K = 200


@dataclass
class ScoreStats:
    """One score's values in a (window, segment): exact moments and extremes, and a KLL sketch that merges with
    other windows' (the report merges a day's)."""

    n: int = 0
    mean: float = math.nan
    m2: float = 0.0  # sum of squared deviations from the mean
    min: float = math.nan
    max: float = math.nan
    sketch: kll_doubles_sketch = field(default_factory=lambda: kll_doubles_sketch(SKETCH_K))

    @classmethod
    def of(cls, values: np.ndarray) -> ScoreStats:
        """The summary of ``values``, NaNs left out."""
        values = values[np.isfinite(values)]
        stats = cls()
        if values.size:
            stats.n = int(values.size)
            stats.mean = float(values.mean())
            stats.m2 = float(np.square(values - stats.mean).sum())
            stats.min, stats.max = float(values.min()), float(values.max())
            stats.sketch.update(values)
        return stats

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1), NaN below two values."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else math.nan

    def quantiles(self) -> dict[str, float]:
        if self.n == 0:
            return {name: math.nan for name in QUANTILES}
        # Inclusive ranks: p50 of an odd count is the middle value, as numpy's "inverted_cdf".
        return {name: self.sketch.get_quantile(q, inclusive=True) for name, q in QUANTILES.items()}


def window_rows(
    scores: pa.Table, rejected: pa.Table, columns: Sequence[str], window_end: dt.datetime, model_id: str
) -> Iterator[dict[str, Any]]:
    """A window's windows-table rows (see :data:`pipelines.records.WINDOWS_SCHEMA`): one per (segment, column), for
    every segment with a scored or a rejected image. A NaN value (a property that does not apply: a PNG's JPEG
    quality) is left out, so ``n`` counts the others."""
    scored_segments = np.asarray(scores.column("segment").to_pylist(), dtype=object)
    rejected_per_segment = Counter(rejected.column("segment").to_pylist())
    values = {name: scores.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in columns}
    # None (no segment) sorts first, as the written rows do.
    for segment in sorted({*scored_segments, *rejected_per_segment}, key=lambda name: (name is not None, name or "")):
        mask = scored_segments == segment
        for name in columns:
            stats = ScoreStats.of(values[name][mask])
            yield {
                "window_end": window_end,
                "segment": segment,
                "score": name,
                "n": stats.n,
                "n_rejected": rejected_per_segment[segment],
                "mean": stats.mean,
                "std": stats.std,
                "min": stats.min,
                "max": stats.max,
                **stats.quantiles(),
                "sketch": stats.sketch.serialize(),
                "model_id": model_id,
            }


class WindowStatistics:
    """The windows table of one window, from its scored and rejected rows: a derived table of
    :class:`pipelines.sinks.WriteTables`, computed where the window's rows are read back to be written."""

    def __init__(self, *, window: dt.timedelta, columns: Sequence[str], model_id: str) -> None:
        self._window = window
        self._columns = tuple(columns)
        self._model_id = model_id

    def __call__(self, label: str, tables: Mapping[str, pa.Table]) -> pa.Table:
        window_end = parse_window_label(label) + self._window
        rows = window_rows(tables["scores"], tables[REJECTED], self._columns, window_end, self._model_id)
        return pa.Table.from_pylist(list(rows), schema=WINDOWS_SCHEMA)


class WindowTables(beam.PTransform):
    """(scored rows, rejections) -> the scores and rejected tables' rows keyed by their window's partition label.

    Rows and rejections go into event-time fixed windows. Rejections of unknown time go to the ``unknown`` partition
    of ``rejected`` and into no window. The windows table is computed from a window's rows where they are written
    (:class:`WindowStatistics`).

    Returns:
        ``{"scores": ..., "rejected": ...}``, PCollections of (label, row) in the global window.
    """

    def __init__(self, *, window: dt.timedelta) -> None:
        super().__init__()
        self._window_seconds = window.total_seconds()

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> dict[str, beam.PCollection]:
        scored_rows, rejected = inputs
        windows = beam_window.FixedWindows(self._window_seconds)
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
