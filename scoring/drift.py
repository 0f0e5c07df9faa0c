"""Window-level drift decisions against a reference, with a family-wise false-alarm rate per window.

Every registered window test (:mod:`scoring.window_tests`) returns the same record (test, score, segment,
statistic, p_value, threshold, is_drift), the way Alibi Detect's detectors do, so one record type is the Parquet
row, the MLflow metric and the alert payload. Effect sizes travel beside the tests so a reviewer sees how large a
drift is, not only that it is significant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from scoring.accuracy import AccuracyEstimate
from scoring.references import ScoreReference
from scoring.severity import Severity
from scoring.window_tests import window_test

WindowStatus = Literal["drift", "ok", "insufficient_data"]
# An empty bin counts as this share, the usual floor that keeps PSI finite.
_PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class FiredTest:
    """Which test fired: the test, the score it tested, and the segment ("" for a feed without segments)."""

    test: str
    score: str
    segment: str

    @property
    def label(self) -> str:
        """``segment/score/test`` (``score/test`` without a segment), for one-line summaries only."""
        return "/".join(part for part in (self.segment, self.score, self.test) if part)


@dataclass(frozen=True)
class TestRecord:
    """One test of one score in one segment of one window.

    Attributes:
        test: the registered window test's name (``ks``, ``beta_binomial``...).
        statistic: what the test measures (the KS distance, the window's OOD rate...).
        p_value: under "this window is drawn from the reference".
        threshold: the significance level this p-value was held to after Holm's step-down correction.
        is_drift: whether the test fired.
        summary: what moved, in words a person reads ("sharpness fell 2.1 IQR below the reference median").
    """

    test: str
    score: str
    segment: str
    statistic: float
    p_value: float
    threshold: float
    is_drift: bool
    summary: str = ""


@dataclass(frozen=True)
class EffectSize:
    """How large the shift of one score is, in units that compare across scores.

    Attributes:
        wasserstein: earth mover's distance between window and reference, in reference standard deviations.
        psi: population stability index on the reference's deciles (0.1 moderate, 0.25 large, by convention).
        median_shift: window median minus reference median, in reference interquartile ranges; for a score, signed
            so that negative means more out of distribution whichever way it points; for an image property (out
            of distribution on both sides), as it moved.
        ood_rate: share of the window's images outside the per-image bounds.
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
class SequentialState:
    """A segment's CUSUM charts after this window (see :mod:`scoring.sequential`).

    Attributes:
        statistic: the largest chart's value, ``chart`` its name (``score/test``), ``limit`` where it signals.
        signalled: whether it crossed the limit in this window (the charts then restart from zero).
        windows: windows the charts have accumulated over since they last started from zero.
        burning_in: whether the charts were still setting their baselines (nothing accumulates meanwhile).
    """

    statistic: float
    limit: float
    signalled: bool
    chart: str
    windows: int
    burning_in: bool = False


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
        accuracy: per tested segment, its accuracy estimated without labels (when the calibration can).
        sequential: per tested segment, its CUSUM charts after this window (in the live monitor).
        severity: per segment that drifted, ``page`` or ``warn`` by the calibration's policy, and why.
    """

    status: WindowStatus
    alpha: float
    n: dict[str, int]
    tests: list[TestRecord] = field(default_factory=list)
    effects: list[EffectSize] = field(default_factory=list)
    insufficient_segments: list[str] = field(default_factory=list)
    accuracy: dict[str, AccuracyEstimate] = field(default_factory=dict)
    sequential: dict[str, SequentialState] = field(default_factory=dict)
    severity: dict[str, Severity] = field(default_factory=dict)

    @property
    def is_drift(self) -> bool:
        return self.status == "drift"

    @property
    def fired(self) -> list[FiredTest]:
        """Every test that fired, in the order the tests were run."""
        return [FiredTest(record.test, record.score, record.segment) for record in self.tests if record.is_drift]

    def fired_in(self, segment: str) -> list[FiredTest]:
        return [fired for fired in self.fired if fired.segment == segment]

    def what_moved(self, segment: str | None = None) -> list[str]:
        """What each fired test saw, in words, most significant first (of one segment, or of all)."""
        fired = [record for record in self.tests if record.is_drift and segment in (None, record.segment)]
        return [
            f"{record.segment}: {record.summary}" if record.segment and segment is None else record.summary
            for record in sorted(fired, key=lambda record: record.p_value)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "is_drift": self.is_drift,
            "fired": [asdict(fired) for fired in self.fired],
            "what_moved": self.what_moved(),
        }


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
    # One-sided: negative is further out of distribution; two-sided: the sign says which way the median moved.
    direction = -1.0 if reference.side == "high" else 1.0
    return EffectSize(
        score=reference.score,
        segment=segment,
        wasserstein=float(stats.wasserstein_distance(window, reference.sample)) / spread,
        psi=psi(window, reference),
        median_shift=direction * (float(np.median(window)) - reference.median) / iqr,
        ood_rate=float(np.mean(reference.is_out_of_distribution(window))),
        expected_ood_rate=reference.expected_ood_rate,
    )


@dataclass(frozen=True)
class _TestedValue:
    """One value of one segment a window's decision tests, with every test fitted on its reference."""

    segment: str
    score: str
    values: np.ndarray
    reference: ScoreReference


@dataclass(frozen=True)
class _Plan:
    """What a window's decision tests, in order, and the segments it does not test."""

    tested: list[_TestedValue]
    sizes: dict[str, int]
    insufficient: list[str]

    def tests(self) -> list[tuple[str, _TestedValue]]:
        """(test, value) for every test the decision runs, in the order its records are."""
        return [(test, value) for value in self.tested for test in value.reference.tests]


def _plan(
    window: Mapping[str, Mapping[str, np.ndarray]],
    references: Mapping[str, Mapping[str, ScoreReference]],
    min_window: int,
) -> _Plan:
    tested: list[_TestedValue] = []
    sizes: dict[str, int] = {}
    insufficient: list[str] = []
    for segment, scores in sorted(window.items()):
        segment_references = references.get(segment) or references.get("")
        if not segment_references:
            raise ValueError(f"no reference for segment {segment!r} and no global reference ('') to fall back to")
        sizes[segment] = max((len(values) for values in scores.values()), default=0)
        if sizes[segment] < min_window:
            insufficient.append(segment)
            continue
        for name, reference in segment_references.items():
            values = np.asarray(scores[name], np.int64 if reference.kind == "categorical" else np.float64)
            if reference.side == "both":
                # An image property that does not apply (a PNG's JPEG quality) is NaN: tested on the images it
                # applies to, when they are enough.
                values = values[np.isfinite(values)]
                if values.size < min_window:
                    continue
            elif not np.isfinite(values).all():
                raise ValueError(f"score {name!r} of segment {segment!r} has NaN or inf; the gate before drift tests")
            tested.append(_TestedValue(segment, name, values, reference))
    return _Plan(tested, sizes, insufficient)


def decide_window(
    window: Mapping[str, Mapping[str, np.ndarray]],
    references: Mapping[str, Mapping[str, ScoreReference]],
    *,
    alpha: float = 0.01,
    min_window: int = 50,
    describe: bool = True,
) -> WindowDecision:
    """Test a window's scores against the references, Holm-correcting across tests, scores and segments.

    Args:
        window: segment -> score or property name -> the window's per-image values (NaN for a property that does
            not apply to an image).
        references: segment -> score name -> reference, each with the window tests fitted on it; segment ``""``
            is the fallback for segments without a reference of their own. Only the scores named here are
            tested, and each with the tests fitted on it.
        alpha: family-wise false-alarm rate per window.
        min_window: segments with fewer images are reported insufficient, never healthy.
        describe: False leaves out the effect sizes (what moved, by how much), which no test reads: the held-out
            check that decides hundreds of windows for their p-values spent 30% of its time on them (profiled).

    Returns:
        The decision, with every test record and, when ``describe``, every effect size.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    plan = _plan(window, references, min_window)
    raw: list[tuple[str, str, str, float, float, str]] = []
    for test, value in plan.tests():
        result = window_test(test).apply(value.values, value.reference, value.reference.tests[test])
        summary = result.summary or f"{value.score}: {test} {result.statistic:.3g}, p {result.p_value:.2g}"
        raw.append((test, value.score, value.segment, result.statistic, result.p_value, summary))
    effects = [
        effect_size(value.values, value.reference, value.segment)
        for value in plan.tested
        if describe and value.reference.kind == "scalar"
    ]
    levels, rejected = holm([p for *_, p, _ in raw], alpha)
    tests = [
        TestRecord(test, name, segment, statistic, p, level, fired, summary)
        for (test, name, segment, statistic, p, summary), level, fired in zip(raw, levels, rejected, strict=True)
    ]
    status: WindowStatus = "insufficient_data" if not raw else ("drift" if any(rejected) else "ok")
    return WindowDecision(status, alpha, plan.sizes, tests, effects, plan.insufficient)


def window_is_drift(
    window: Mapping[str, Mapping[str, np.ndarray]],
    references: Mapping[str, Mapping[str, ScoreReference]],
    *,
    alpha: float = 0.01,
    min_window: int = 50,
) -> bool:
    """``decide_window(...).is_drift``, doing only the work that answer needs: for the checks that resample a
    window's decision hundreds of times and count its pages.

    Holm's step-down rejects some hypothesis exactly when the smallest p-value is at most alpha / m, m the number
    of tests (its first step; Holm, Scand. J. Statist. 1979), so whether a window drifts is whether any one test
    fires at alpha / m. The analytic tests are asked first and the permutation tests only when none fired, each
    stopping once its answer at that level is settled (:meth:`WindowTest.fires_at`); no effect size is computed.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tests = _plan(window, references, min_window).tests()
    level = alpha / len(tests) if tests else 0.0
    # Stable: within each kind of test, the decision's own order.
    for test, value in sorted(tests, key=lambda planned: window_test(planned[0]).resampled):
        if window_test(test).fires_at(level, value.values, value.reference, value.reference.tests[test]):
            return True
    return False
