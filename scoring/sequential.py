"""Sequential detection across windows: a CUSUM per test, so a drift too slight for any one window still pages.

A window decision holds each window to alpha on its own, so a shift that moves every window a little (8% of each
window's images blurred) can go unseen for ever. Page's CUSUM (Page, Biometrika 1954) accumulates the evidence:
every test of every value in a segment keeps a chart

    S_t = max(0, S_{t-1} + z_t - drift),   z_t = Φ⁻¹(1 - p_t)

where p_t is the test's p-value in window t (z is standard normal for a healthy window, large for a shifted one),
and the segment signals when any chart exceeds ``limit``. With ``drift`` = 1 a per-window evidence of z ≈ 3.5 (an
OOD count a quarter above the reference's in windows of 100) crosses a limit of about 5 within 2 to 3 windows.

The limit is fitted at calibration by simulation: healthy sequences of windows whose evidence has the correlation
across charts that the held-out false-alarm check's windows show (a blur moves sharpness and noise together), plus
the offset a finite reference shares with every window, and the limit is the smallest whose mean run length to a
false signal reaches ``target_run_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

# A p-value of 1e-300 says no more than one of 1e-12: z is clipped there, so one extreme window cannot hold a
# chart up for dozens of windows after the shift has gone.
_Z_MAX = float(stats.norm.isf(1e-12))


def chart_name(score: str, test: str) -> str:
    return f"{score}/{test}"


def evidence(p_value: float) -> float:
    """A test's p-value as standard-normal evidence against "healthy": Φ⁻¹(1 - p), clipped to [-_Z_MAX, _Z_MAX]."""
    if not math.isfinite(p_value):
        return math.nan
    return float(np.clip(stats.norm.isf(min(max(p_value, 1e-300), 1.0)), -_Z_MAX, _Z_MAX))


@dataclass(frozen=True)
class ChartStep:
    """A segment's charts after one window.

    Attributes:
        statistics: chart name -> S after this window (0 for every chart after a signal: the charts restart).
        statistic: the largest S before any restart, and ``chart`` the chart that holds it.
        signalled: whether a chart crossed the limit in this window.
        windows: windows since the charts last started from zero (the run the statistic accumulated over).
    """

    statistics: dict[str, float]
    statistic: float
    chart: str
    signalled: bool
    windows: int


@dataclass(frozen=True)
class Cusum:
    """The charts' parameters, fitted at calibration.

    Attributes:
        drift: the allowance subtracted per window (k).
        limit: the signal limit (h).
        target_run_length: the mean healthy windows between false signals asked for.
        run_length: the mean measured by simulation at ``limit`` (censored sequences counted at their length, so
            it is a lower bound).
        simulated: healthy sequences simulated, each ``simulated_windows`` long.
    """

    drift: float
    limit: float
    target_run_length: int
    run_length: float
    simulated: int
    simulated_windows: int

    def step(self, previous: Mapping[str, float], window: Mapping[str, float], windows: int = 0) -> ChartStep:
        """Every chart of a segment after one window: ``previous`` S per chart (missing: 0), ``window`` evidence per
        chart (NaN or missing: the chart did not test this window and keeps its S), ``windows`` the run so far."""
        names = sorted(set(previous) | set(window))
        updated = {}
        for name in names:
            before = previous.get(name, 0.0)
            z = window.get(name, math.nan)
            updated[name] = before if not math.isfinite(z) else max(0.0, before + z - self.drift)
        chart = max(updated, key=updated.get, default="")
        statistic = updated.get(chart, 0.0)
        signalled = statistic > self.limit
        if signalled:
            updated = dict.fromkeys(updated, 0.0)
        return ChartStep(updated, statistic, chart, signalled, 0 if signalled else windows + 1)

    def describe(self) -> str:
        return (
            f"CUSUM per test, allowance {self.drift:g} per window, limit {self.limit:.2f}: a false signal every "
            f"{self.run_length:.0f} healthy windows on average (simulated; asked for {self.target_run_length})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Cusum:
        return cls(**entry)


def null_model(null: np.ndarray) -> np.ndarray:
    """The correlation of the charts' evidence on healthy windows, from the held-out check's windows.

    Only the correlation is taken from them, not their means: those windows are drawn from one small held-out pool,
    so its own chance offset from the reference is shared by all of them, and would read as a drift that never
    ends. Each chart's evidence is standard normal on a healthy window (a valid test's p-value is uniform); a chart
    that did not test a window counts there at its mean.
    """
    z = np.where(np.isnan(null), np.nanmean(null, axis=0, keepdims=True), null)
    spread = z.std(axis=0)
    centred = (z - z.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    correlation = (centred.T @ centred) / max(1, z.shape[0])
    np.fill_diagonal(correlation, 1.0)
    return correlation


def run_lengths(
    correlation: np.ndarray,
    limits: Sequence[float],
    *,
    drift: float,
    reference_share: float,
    sequences: int,
    length: int,
    seed: int,
) -> np.ndarray:
    """Simulated run lengths to the first false signal, per limit (rows) and sequence (columns).

    Each healthy window's evidence is drawn standard normal with the charts' ``correlation``, plus an offset
    shared by every window of a sequence: a finite reference is itself a sample, and its chance departure from
    the production distribution is seen by every window alike. Its share of the evidence's unit variance is
    ``reference_share`` (a window's size over the two together: the reference's part of a two-sample statistic's
    variance; 0.125 for windows of 100 against a reference of 700). A sequence that never signals counts as
    ``length``.
    """
    rng = np.random.default_rng(seed)
    values, vectors = np.linalg.eigh(correlation)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))  # root @ root.T == correlation, for any PSD matrix
    charts = np.zeros((sequences, correlation.shape[0]))
    offset = np.sqrt(reference_share) * rng.standard_normal((sequences, root.shape[1])) @ root.T
    highest = np.empty((length, sequences))
    for t in range(length):
        z = np.sqrt(1.0 - reference_share) * rng.standard_normal((sequences, root.shape[1])) @ root.T + offset
        charts = np.maximum(0.0, charts + z - drift)
        highest[t] = charts.max(axis=1)
    running = np.maximum.accumulate(highest, axis=0)
    # Running maxima only rise: the first window over a limit is where the limit would be inserted.
    limits = np.asarray(limits, np.float64)
    crossed = np.stack([np.searchsorted(running[:, s], limits, side="right") for s in range(sequences)], axis=1)
    return np.minimum(crossed + 1, length).astype(np.float64)


def fit_cusum(
    null: np.ndarray,
    *,
    reference_share: float,
    drift: float = 1.0,
    target_run_length: int = 1000,
    sequences: int = 100,
    seed: int = 0,
) -> Cusum:
    """The smallest limit whose simulated mean run length on healthy windows reaches ``target_run_length``.

    Args:
        null: (windows, charts) evidence of healthy windows, NaN where a chart did not test a window: the charts'
            correlation is read from it (:func:`null_model`).
        reference_share: a typical window's size over itself plus the reference's (see :func:`run_lengths`).
        drift: the allowance per window; 1 suits per-window evidence of z 2 to 4, the shifts a window alone misses.
        target_run_length: mean healthy windows between false signals (1000: six weeks of hourly windows, which
            adds a tenth to the pages a per-window alpha of 1% allows).
        sequences: simulated healthy sequences, each three times the target long.
    """
    if not 0 <= reference_share < 1:
        raise ValueError(f"reference_share must be in [0, 1), got {reference_share}")
    if null.ndim != 2 or null.shape[0] < 2:
        raise ValueError("the null evidence must be a (windows, charts) array with at least two windows")
    length = 3 * target_run_length
    limits = np.round(np.arange(0.5, 40.0, 0.05), 2)
    lengths = run_lengths(
        null_model(null), limits, drift=drift, reference_share=reference_share, sequences=sequences,
        length=length, seed=seed,
    )  # fmt: skip
    means = lengths.mean(axis=1)
    reached = np.flatnonzero(means >= target_run_length)
    index = int(reached[0]) if reached.size else limits.size - 1
    return Cusum(drift, float(limits[index]), target_run_length, float(means[index]), sequences, length)


def window_evidence(records: Iterable[Any], segment: str) -> dict[str, float]:
    """One window's evidence per chart of a segment, from its test records (``TestRecord``-like: test, score,
    segment, p_value)."""
    return {
        chart_name(record.score, record.test): evidence(record.p_value)
        for record in records
        if record.segment == segment and math.isfinite(record.p_value)
    }
