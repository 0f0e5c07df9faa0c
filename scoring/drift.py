"""Window-level drift tests against a reference, with a family-wise false-alarm rate per window.

Every test returns the same record (test, score, segment, statistic, p_value, threshold, is_drift), the way
Alibi Detect's detectors do, so one record type is the Parquet row, the MLflow metric and the alert payload.
Effect sizes travel beside the tests so a reviewer sees how large a drift is, not only that it is significant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

WindowStatus = Literal["drift", "ok", "insufficient_data"]
# An empty bin counts as this share, the usual floor that keeps PSI finite.
_PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class ScoreReference:
    """The healthy distribution of one score, and its per-image threshold.

    Attributes:
        score: the score's name.
        threshold: per-image OOD threshold; an image scoring below it is out of distribution.
        expected_ood_rate: share of reference images below the threshold (about 1 - TPR).
        sample: reference scores, sorted; the data the window tests compare against.
    """

    score: str
    threshold: float
    expected_ood_rate: float
    sample: np.ndarray

    @property
    def median(self) -> float:
        return float(np.median(self.sample))

    @property
    def iqr(self) -> float:
        upper, lower = np.quantile(self.sample, [0.75, 0.25])
        return float(upper - lower)

    @property
    def decile_edges(self) -> np.ndarray:
        return np.quantile(self.sample, np.linspace(0.1, 0.9, 9))


@dataclass(frozen=True)
class TestRecord:
    """One test of one score in one segment of one window.

    Attributes:
        test: ``ks`` (two-sample Kolmogorov-Smirnov) or ``binomial`` (OOD rate above the rate expected at the
            per-image threshold, with the threshold's own uncertainty: see :func:`ood_rate_p_value`).
        statistic: the KS distance, or the window's OOD rate.
        p_value: under "this window is drawn from the reference".
        threshold: the significance level this p-value was held to after Holm's step-down correction.
        is_drift: whether the test fired.
    """

    test: str
    score: str
    segment: str
    statistic: float
    p_value: float
    threshold: float
    is_drift: bool


@dataclass(frozen=True)
class EffectSize:
    """How large the shift of one score is, in units that compare across scores.

    Attributes:
        wasserstein: earth mover's distance between window and reference, in reference standard deviations.
        psi: population stability index on the reference's deciles (0.1 moderate, 0.25 large, by convention).
        median_shift: window median minus reference median, in reference interquartile ranges (negative
            means more out-of-distribution, since every score is high for in-distribution images).
        ood_rate: share of the window's images below the per-image threshold.
        expected_ood_rate: the same share on the reference.
    """

    score: str
    segment: str
    wasserstein: float
    psi: float
    median_shift: float
    ood_rate: float
    expected_ood_rate: float


@dataclass(frozen=True)
class WindowDecision:
    """The drift decision for one window, across scores, tests and segments.

    Attributes:
        status: ``drift``, ``ok``, or ``insufficient_data`` when no segment reached the minimum size.
        alpha: the family-wise false-alarm rate the tests were corrected to.
        n: images in the window, per segment.
        tests: every test record, Holm-corrected together.
        effects: effect sizes per score and segment.
        insufficient_segments: segments below the minimum window size, not tested.
    """

    status: WindowStatus
    alpha: float
    n: dict[str, int]
    tests: list[TestRecord] = field(default_factory=list)
    effects: list[EffectSize] = field(default_factory=list)
    insufficient_segments: list[str] = field(default_factory=list)

    @property
    def is_drift(self) -> bool:
        return self.status == "drift"

    @property
    def fired(self) -> list[str]:
        """``segment/score/test`` of every test that fired, for a one-line alert summary."""
        return [f"{record.segment or '-'}/{record.score}/{record.test}" for record in self.tests if record.is_drift]

    def to_dict(self) -> dict:
        return {**asdict(self), "is_drift": self.is_drift, "fired": self.fired}


def holm(p_values: Sequence[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm's step-down procedure: family-wise error rate <= alpha under any dependence.

    Returns:
        The level each p-value was compared to (alpha / (m - rank)), and which hypotheses are rejected.
    """
    order = np.argsort(p_values, kind="mergesort")
    count = len(p_values)
    levels = [0.0] * count
    rejected = [False] * count
    still_rejecting = True
    for rank, index in enumerate(order):
        levels[index] = alpha / (count - rank)
        still_rejecting = still_rejecting and p_values[index] <= levels[index]
        rejected[index] = still_rejecting
    return levels, rejected


def psi(window: np.ndarray, reference: ScoreReference) -> float:
    """Population stability index of the window on the reference's deciles."""
    edges = reference.decile_edges
    expected = np.bincount(np.searchsorted(edges, reference.sample, side="right"), minlength=10) / reference.sample.size
    observed = np.bincount(np.searchsorted(edges, window, side="right"), minlength=10) / window.size
    expected, observed = np.maximum(expected, _PSI_FLOOR), np.maximum(observed, _PSI_FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def effect_size(window: np.ndarray, reference: ScoreReference, segment: str = "") -> EffectSize:
    spread = float(np.std(reference.sample)) or 1.0
    iqr = reference.iqr or spread
    return EffectSize(
        score=reference.score,
        segment=segment,
        wasserstein=float(stats.wasserstein_distance(window, reference.sample)) / spread,
        psi=psi(window, reference),
        median_shift=(float(np.median(window)) - reference.median) / iqr,
        ood_rate=float(np.mean(window < reference.threshold)),
        expected_ood_rate=reference.expected_ood_rate,
    )


def ood_rate_p_value(ood: int, window_size: int, reference: ScoreReference) -> float:
    """P(at least ``ood`` of ``window_size`` healthy images fall below the reference's threshold).

    The threshold is an order statistic of a finite reference, so the healthy OOD probability is not
    known exactly: it is Beta(k + 1, n - k) distributed for k of n reference scores below it, and the
    window's count is beta-binomial. This is exact for any score distribution; a plain binomial test at
    p = k / n would page too often when the reference is small next to the window.
    """
    below = int(np.sum(reference.sample < reference.threshold))
    null = stats.betabinom(window_size, below + 1, reference.sample.size - below)
    return float(null.sf(ood - 1))


def _raw_tests(window: np.ndarray, reference: ScoreReference) -> list[tuple[str, float, float]]:
    ks = stats.ks_2samp(window, reference.sample)
    ood = int(np.sum(window < reference.threshold))
    return [
        ("ks", float(ks.statistic), float(ks.pvalue)),
        ("binomial", ood / window.size, ood_rate_p_value(ood, window.size, reference)),
    ]


def decide_window(
    window: Mapping[str, Mapping[str, np.ndarray]],
    references: Mapping[str, Mapping[str, ScoreReference]],
    *,
    alpha: float = 0.01,
    min_window: int = 50,
) -> WindowDecision:
    """Test a window's scores against the references, Holm-correcting across tests, scores and segments.

    Args:
        window: segment -> score name -> the window's per-image scores.
        references: segment -> score name -> reference; segment ``""`` is the fallback for segments
            without a reference of their own. Only the scores named here are tested.
        alpha: family-wise false-alarm rate per window.
        min_window: segments with fewer images are reported insufficient, never healthy.

    Returns:
        The decision, with every test record and effect size.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    raw: list[tuple[str, str, str, float, float]] = []
    effects: list[EffectSize] = []
    sizes: dict[str, int] = {}
    insufficient: list[str] = []
    for segment, scores in sorted(window.items()):
        segment_references = references.get(segment) or references.get("")
        if not segment_references:
            raise ValueError(f"no reference for segment {segment!r} and no global reference ('') to fall back to")
        sizes[segment] = max((np.asarray(values).size for values in scores.values()), default=0)
        if sizes[segment] < min_window:
            insufficient.append(segment)
            continue
        for name, reference in segment_references.items():
            values = np.asarray(scores[name], np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"score {name!r} of segment {segment!r} has NaN or inf; the gate before drift tests")
            raw.extend((test, name, segment, statistic, p) for test, statistic, p in _raw_tests(values, reference))
            effects.append(effect_size(values, reference, segment))
    levels, rejected = holm([p for *_, p in raw], alpha)
    tests = [
        TestRecord(test, name, segment, statistic, p, level, fired)
        for (test, name, segment, statistic, p), level, fired in zip(raw, levels, rejected, strict=True)
    ]
    status: WindowStatus = "insufficient_data" if not raw else ("drift" if any(rejected) else "ok")
    return WindowDecision(status, alpha, sizes, tests, effects, insufficient)


@dataclass(frozen=True)
class CusumState:
    """One window's step of a Bernoulli CUSUM on the OOD rate."""

    statistic: float
    is_alarm: bool


def ood_rate_cusum(
    counts: Sequence[tuple[int, int]], expected_rate: float, *, shifted_rate: float | None = None, limit: float = 5.0
) -> list[CusumState]:
    """Page's CUSUM over consecutive windows' OOD counts, for slow drift no single window shows.

    Each window adds its log-likelihood ratio of ``shifted_rate`` (default twice the expected rate)
    against ``expected_rate``; the sum is floored at zero and alarms above ``limit``, then restarts.

    Args:
        counts: (images, OOD images) per window, in time order.
        expected_rate: the healthy OOD rate (the calibration's expected_ood_rate).
        shifted_rate: the rate it should be quick to detect.
        limit: alarm level in nats; larger means fewer false alarms and slower detection.
    """
    shifted = shifted_rate if shifted_rate is not None else min(2 * expected_rate, 0.5 + expected_rate / 2)
    if not 0 < expected_rate < shifted < 1:
        raise ValueError(f"need 0 < expected_rate ({expected_rate}) < shifted_rate ({shifted}) < 1")
    gain, loss = math.log(shifted / expected_rate), math.log((1 - shifted) / (1 - expected_rate))
    statistic, states = 0.0, []
    for images, ood in counts:
        statistic = max(0.0, statistic + ood * gain + (images - ood) * loss)
        alarm = statistic > limit
        states.append(CusumState(statistic, alarm))
        if alarm:
            statistic = 0.0
    return states
