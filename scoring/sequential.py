"""Sequential detection across windows: a CUSUM per test, so a drift too slight for any one window still pages.

A window decision holds each window to alpha on its own, so a shift that moves every window a little (8% of each
window's images blurred) can go unseen for ever. Page's CUSUM (Page, Biometrika 1954) accumulates the evidence:
every test of every value in a segment keeps a chart

    S_t = max(0, S_{t-1} + (z_t - baseline) - drift),   z_t = Φ⁻¹(1 - p_t)

where p_t is the test's p-value in window t (z is standard normal for a window drawn from the reference, large for
a shifted one), and the segment signals when any chart exceeds ``limit``.

The baseline is each chart's mean evidence over the first ``burn_in`` windows a threshold version monitors (the
charts accumulate nothing meanwhile): a reference is a finite sample, and its chance departure from the production
distribution is shared by every window, so against the reference alone a chart of a sound reference drifts upward
for ever. On ImageNet samples, with a reference of 245 images and windows of 100, that offset held the limit a
mean run length of 1000 windows needs above 20 (nothing slow could be caught); centred on the burn-in, the charts
test what they should: whether the feed moved since monitoring began. A shift present from the first window is the
window decision's to catch, and a reference unlike the feed is the reference check's (:mod:`scoring.reference_check`).

The limit is fitted at calibration by simulation: healthy sequences of windows whose evidence has the correlation
across charts that the held-out false-alarm check's windows show (a blur moves sharpness and noise together), each
centred on its own burn-in as the monitor centres them, and the limit is the smallest whose mean run length to a
false signal after the burn-in reaches ``target_run_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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
class ChartState:
    """A segment's charts between windows.

    Attributes:
        statistics: chart name -> S.
        baseline: chart name -> (sum of its evidence, windows) over its burn-in.
        seen: windows the charts have seen since the threshold version began (the burn-in among them).
        windows: windows accumulated since the charts last started from zero.
    """

    statistics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, tuple[float, int]] = field(default_factory=dict)
    seen: int = 0
    windows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "baseline": {name: list(entry) for name, entry in self.baseline.items()}}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any] | None) -> ChartState:
        if not entry:
            return cls()
        baseline = {name: (float(total), int(count)) for name, (total, count) in entry.get("baseline", {}).items()}
        return cls(dict(entry.get("statistics", {})), baseline, int(entry.get("seen", 0)), int(entry.get("windows", 0)))


@dataclass(frozen=True)
class ChartStep:
    """A segment's charts after one window.

    Attributes:
        state: the charts after this window (all at 0 after a signal: the charts restart).
        statistic: the largest S before any restart, and ``chart`` the chart that holds it.
        signalled: whether a chart crossed the limit in this window.
        burning_in: whether no chart has finished its burn-in yet (nothing accumulates, nothing signals).
    """

    state: ChartState
    statistic: float
    chart: str
    signalled: bool
    burning_in: bool = False

    @property
    def windows(self) -> int:
        return self.state.windows


@dataclass(frozen=True)
class Cusum:
    """The charts' parameters, fitted at calibration.

    Attributes:
        drift: the allowance subtracted per window (k).
        limit: the signal limit (h).
        burn_in: windows whose evidence sets each chart's baseline before it accumulates.
        target_run_length: the mean healthy windows between false signals asked for.
        run_length: the mean measured by simulation at ``limit`` (censored sequences counted at their length, so
            it is a lower bound).
        simulated: healthy sequences simulated, each ``simulated_windows`` long after its burn-in.
    """

    drift: float
    limit: float
    burn_in: int
    target_run_length: int
    run_length: float
    simulated: int
    simulated_windows: int

    def step(self, state: ChartState, window: Mapping[str, float]) -> ChartStep:
        """Every chart of a segment after one window: ``window`` is the evidence per chart (NaN or missing: the
        chart did not test this window and stays as it was).

        Each chart burns in on its own first ``burn_in`` windows of evidence: one that starts testing later (JPEG
        quality once JPEGs arrive) would otherwise be centred on nothing, and drift upward with the reference's
        offset that the centring is there to remove.
        """
        evidence = {name: z for name, z in window.items() if math.isfinite(z)}
        baseline = dict(state.baseline)
        updated = dict(state.statistics)
        for name, z in evidence.items():
            total, count = baseline.get(name, (0.0, 0))
            if count < self.burn_in:
                baseline[name] = (total + z, count + 1)
                updated.setdefault(name, 0.0)
            else:
                updated[name] = max(0.0, updated.get(name, 0.0) + z - total / count - self.drift)
        # Burning in: no chart had finished its burn-in before this window, so nothing could accumulate in it.
        burning_in = not any(count >= self.burn_in for _, count in state.baseline.values())
        chart = max(updated, key=updated.get, default="")
        statistic = updated.get(chart, 0.0)
        signalled = statistic > self.limit
        if signalled:
            updated = dict.fromkeys(updated, 0.0)
        windows = 0 if signalled or burning_in else state.windows + 1
        return ChartStep(
            ChartState(updated, baseline, state.seen + 1, windows), statistic, chart, signalled, burning_in
        )

    def describe(self) -> str:
        reached = "" if self.run_length >= self.target_run_length else " NOT reached: the largest limit tried"
        return (
            f"CUSUM per test, centred on the first {self.burn_in} windows monitored, allowance {self.drift:g} per "
            f"window, limit {self.limit:.2f}: a false signal every {self.run_length:.0f} healthy windows of a "
            f"segment on average (simulated; asked for {self.target_run_length}{reached})"
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
    burn_in: int,
    sequences: int,
    length: int,
    seed: int,
) -> np.ndarray:
    """Simulated run lengths to the first false signal after the burn-in, per limit (rows) and sequence (columns).

    Each healthy window's evidence is drawn standard normal with the charts' ``correlation``; each sequence's charts
    are centred on the mean of its own first ``burn_in`` windows, as the monitor centres them. A shared offset (a
    finite reference's departure from production) would cancel in that centring, so none is drawn. A sequence that
    never signals counts as ``length``.
    """
    rng = np.random.default_rng(seed)
    values, vectors = np.linalg.eigh(correlation)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))  # root @ root.T == correlation, for any PSD matrix

    def draw() -> np.ndarray:
        return rng.standard_normal((sequences, root.shape[1])) @ root.T

    centre = sum(draw() for _ in range(burn_in)) / burn_in if burn_in else 0.0
    charts = np.zeros((sequences, correlation.shape[0]))
    highest = np.empty((length, sequences))
    for t in range(length):
        charts = np.maximum(0.0, charts + draw() - centre - drift)
        highest[t] = charts.max(axis=1)
    running = np.maximum.accumulate(highest, axis=0)
    # Running maxima only rise: the first window over a limit is where the limit would be inserted.
    limits = np.asarray(limits, np.float64)
    crossed = np.stack([np.searchsorted(running[:, s], limits, side="right") for s in range(sequences)], axis=1)
    return np.minimum(crossed + 1, length).astype(np.float64)


def fit_cusum(
    null: np.ndarray,
    *,
    drift: float = 1.0,
    burn_in: int = 24,
    target_run_length: int = 1000,
    sequences: int = 100,
    seed: int = 0,
) -> Cusum:
    """The smallest limit whose simulated mean run length on healthy windows reaches ``target_run_length``.

    Args:
        null: (windows, charts) evidence of healthy windows, NaN where a chart did not test a window: the charts'
            correlation is read from it (:func:`null_model`).
        drift: the allowance per window; 1 suits per-window evidence of z 2 to 4, the shifts a window alone misses.
        burn_in: windows each chart's baseline is the mean of (24: a day of hourly windows, whose mean evidence is
            known to ±0.2).
        target_run_length: mean healthy windows between false signals (1000: six weeks of hourly windows, which
            adds a tenth to the pages a per-window alpha of 1% allows).
        sequences: simulated healthy sequences, each three times the target long after the burn-in.
    """
    if null.ndim != 2 or null.shape[0] < 2:
        raise ValueError("the null evidence must be a (windows, charts) array with at least two windows")
    if burn_in < 1:
        raise ValueError(f"burn_in must be at least one window, got {burn_in}")
    length = 3 * target_run_length
    limits = np.round(np.arange(0.5, 40.0, 0.05), 2)
    lengths = run_lengths(
        null_model(null), limits, drift=drift, burn_in=burn_in, sequences=sequences, length=length, seed=seed
    )
    means = lengths.mean(axis=1)
    reached = np.flatnonzero(means >= target_run_length)
    index = int(reached[0]) if reached.size else limits.size - 1
    return Cusum(drift, float(limits[index]), burn_in, target_run_length, float(means[index]), sequences, length)


def window_evidence(records: Iterable[Any], segment: str) -> dict[str, float]:
    """One window's evidence per chart of a segment, from its test records (``TestRecord``-like: test, score,
    segment, p_value)."""
    return {
        chart_name(record.score, record.test): evidence(record.p_value)
        for record in records
        if record.segment == segment and math.isfinite(record.p_value)
    }
