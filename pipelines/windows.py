"""Per-window statistics of every score: exact moments and a mergeable KLL quantile sketch.

Partial results from many workers merge exactly (count, mean, variance by Chan et al.'s parallel
formula, min, max) or within the sketch's rank error (quantiles), so an hour's windows can be regrouped
into a day without rescoring.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from datasketches import kll_doubles_sketch

from pipelines.records import QUANTILES

# k = 200 gives about 1.65% normalized rank error (DataSketches KLL docs), and is exact below ~200 values.
SKETCH_K = 200

_DURATION = re.compile(r"(\d+)\s*(d|h|min|m|s)")
_UNITS = {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}


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


def align_to_windows(
    since: dt.datetime | None, until: dt.datetime | None, window: dt.timedelta
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Widen [since, until) to whole windows: a window is the unit that is written, replaced and tested."""
    size = window.total_seconds()

    def floor(moment: dt.datetime) -> dt.datetime:
        return dt.datetime.fromtimestamp(math.floor(moment.timestamp() / size) * size, dt.UTC)

    aligned_until = None
    if until is not None:
        aligned_until = floor(until)
        if aligned_until < until:
            aligned_until += window
    return (floor(since) if since is not None else None), aligned_until


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
    """Combines a (window, segment)'s inputs: a mapping of scores per scored image, None per rejection."""

    def __init__(self, score_names: tuple[str, ...]) -> None:
        self._score_names = score_names

    def create_accumulator(self) -> WindowAccumulator:
        return WindowAccumulator(scores={name: ScoreStats() for name in self._score_names})

    def add_input(self, accumulator: WindowAccumulator, element: Mapping[str, float] | None) -> WindowAccumulator:
        if element is None:
            accumulator.n_rejected += 1
        else:
            for name in self._score_names:
                accumulator.scores[name].add(float(element[name]))
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
