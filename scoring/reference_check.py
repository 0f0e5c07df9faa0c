"""Does a calibration's reference represent production? Its decision rule run on healthy-looking production images.

A calibration's false-alarm rate is checked on held-out reference images, so it holds for windows drawn like the
reference. Calibrated on curated photos and monitoring uncurated ones of the same classes, the rule paged 13% of
healthy windows at alpha 1% (1.2% when calibrated on a random half of production): nothing in the calibration
itself can see that. This check resamples windows from production as the calibration's check resamples them from
its held-out part, and measures how far production sits from the reference value by value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from scoring.calibration import Calibration
from scoring.drift import effect_size, window_is_drift

FIX_COMMAND = "gradwatch calibrate --from-out OUT --since ... --until ..."
# Values named as most off: enough for a reviewer to see the pattern, few enough to read in a log line.
MOST_OFF = 5


@dataclass(frozen=True)
class PageRate:
    """How often the decision rule pages windows of one size resampled from production, with its Wilson 95%
    interval."""

    window_size: int
    windows: int
    pages: int
    ci_low: float
    ci_high: float

    @property
    def rate(self) -> float:
        return self.pages / self.windows


@dataclass(frozen=True)
class ValueShift:
    """How far production sits from the reference on one scalar value.

    Attributes:
        ks_distance, ks_p: two-sample Kolmogorov-Smirnov between production's and the reference's values.
        median_shift: production median minus reference median in reference IQRs (for a score, negative is
            further out of distribution; see :class:`scoring.drift.EffectSize`).
        outside, expected_outside: share of production images outside the per-image bounds, and the reference's.
    """

    name: str
    images: int
    ks_distance: float
    ks_p: float
    median_shift: float
    psi: float
    wasserstein: float
    outside: float
    expected_outside: float


@dataclass(frozen=True)
class ReferenceCheck:
    """The verdict, what it rests on, and what to do."""

    representative: bool
    alpha: float
    images: int
    page_rates: tuple[PageRate, ...]
    values: tuple[ValueShift, ...]
    most_off: tuple[str, ...]
    # Values the calibration tests that production did not bring (fitted with another state, or not scored).
    unchecked: tuple[str, ...] = ()
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        for rate, entry in zip(self.page_rates, document["page_rates"], strict=True):
            entry["rate"] = rate.rate
        return document

    def summary(self) -> str:
        """One line: the verdict, the worst page rate, the values most off."""
        verdict = "representative" if self.representative else "NOT representative"
        worst = max(self.page_rates, key=lambda rate: rate.ci_low)
        off = ", ".join(
            f"{shift.name} (KS {shift.ks_distance:.2f})" for shift in self.values if shift.name in self.most_off
        )
        return (
            f"{verdict}: pages {worst.rate:.1%} of healthy-looking windows of {worst.window_size} "
            f"(95% CI {worst.ci_low:.1%}-{worst.ci_high:.1%}, alpha {self.alpha:.1%}); most off: {off or '-'}"
        )


def check_reference(
    calibration: Calibration,
    production: Mapping[str, np.ndarray],
    *,
    segments: Sequence[str] | None = None,
    windows: int | None = None,
    fix_command: str = FIX_COMMAND,
) -> ReferenceCheck:
    """Whether the calibration's reference represents production.

    Args:
        calibration: the thresholds to check.
        production: value name -> per-image values of healthy-looking production images, as calibrate() takes
            them. Values the calibration tests that are missing here are left out of the decision (and named in
            ``unchecked``): pass a fitted value (ViM, features) only when it was computed with this calibration's
            fitted state.
        segments: per-image segment, so that each window's segments are decided against their own references.
        windows: resampled windows per size (default: the calibration's ``check_windows``).
        fix_command: the command that calibrates from these production windows, for the fix.

    Raises:
        ValueError: production shares no value with the calibration, or has fewer images than its smallest
            check window.
    """
    names = [name for name in calibration.scores if name in production]
    if not any(name in calibration.scalar_scores for name in names):
        raise ValueError(
            f"production has none of the calibration's scalar values {calibration.scalar_scores}; pass the scores "
            "table's values"
        )
    columns, segment_of = _usable(calibration, production, names, segments)
    count = len(segment_of)
    config = calibration.config
    sizes = [size for size in config.check_window_sizes if size <= count]
    if not sizes:
        raise ValueError(
            f"{count} production images are fewer than the smallest check window ({min(config.check_window_sizes)}); "
            "check against a longer period"
        )
    references = {
        segment: {name: reference for name, reference in scores.items() if name in columns}
        for segment, scores in calibration.references.items()
    }
    rng = np.random.default_rng(config.seed)
    rates = tuple(
        _page_rate(columns, segment_of, references, size, windows or config.check_windows, config.alpha, rng)
        for size in sizes
    )
    shifts = tuple(_shift(calibration, name, columns[name]) for name in columns if name in calibration.scalar_scores)
    # KS saturates at 1 when production and reference do not overlap at all; the median shift orders those.
    ordered = sorted(shifts, key=lambda shift: (-shift.ks_distance, -abs(shift.median_shift)))
    most_off = tuple(shift.name for shift in ordered[:MOST_OFF])
    # Not representative when even the interval's low end pages more than twice alpha: the rate of a representative
    # reference varies from one reference to another (README: 1.5% [0.3, 2.7] at alpha 1% over random halves of
    # production), so alpha itself would condemn sound references, while at twice alpha the paging budget is spent
    # twice over for certain. The calibration's own held-out check warns at the same point.
    representative = all(rate.ci_low <= 2 * config.alpha for rate in rates)
    return ReferenceCheck(
        representative=representative,
        alpha=config.alpha,
        images=count,
        page_rates=rates,
        values=shifts,
        most_off=most_off,
        unchecked=tuple(name for name in calibration.scores if name not in columns),
        fix=None if representative else f"calibrate from production: {fix_command}",
    )


def _usable(
    calibration: Calibration,
    production: Mapping[str, np.ndarray],
    names: Sequence[str],
    segments: Sequence[str] | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The values as arrays, without the images whose scores are not finite (the monitor's gate keeps such images
    out of decisions, and the decision refuses them)."""
    kinds = {name: calibration.reference(name).kind for name in names}
    columns = {
        name: np.asarray(production[name], np.int64 if kinds[name] == "categorical" else np.float64) for name in names
    }
    count = len(next(iter(columns.values())))
    if any(len(values) != count for values in columns.values()):
        raise ValueError("every production value must have one value per image")
    keep = np.ones(count, bool)
    for name, values in columns.items():
        if kinds[name] == "scalar" and calibration.reference(name).side != "both":
            keep &= np.isfinite(values)
    segment_of = np.asarray(segments if segments is not None else [""] * count, dtype=object)
    return {name: values[keep] for name, values in columns.items()}, segment_of[keep]


def _page_rate(
    columns: Mapping[str, np.ndarray],
    segment_of: np.ndarray,
    references: Mapping[str, Mapping[str, Any]],
    size: int,
    windows: int,
    alpha: float,
    rng: np.random.Generator,
) -> PageRate:
    pages = 0
    for _ in range(windows):
        # Without replacement, as the calibration's own check draws: a repeated image is a distribution of its own
        # to KS.
        picked = rng.choice(segment_of.size, size, replace=False)
        window = {
            segment: {name: values[picked][segment_of[picked] == segment] for name, values in columns.items()}
            for segment in set(segment_of[picked])
        }
        # min_window 1, as the held-out check: the question is the rule's rate on healthy windows, not how often a
        # segment is too small to be tested. Whether the decision pages, not the decision: the same answer for a
        # fraction of the work (a permutation test stops once it is settled), so the monitor can check on its own.
        pages += window_is_drift(window, references, alpha=alpha, min_window=1)
    interval = stats.binomtest(pages, windows).proportion_ci(method="wilson")
    return PageRate(size, windows, pages, float(interval.low), float(interval.high))


def _shift(calibration: Calibration, name: str, values: np.ndarray) -> ValueShift:
    reference = calibration.reference(name)
    values = values[np.isfinite(values)]  # a property that does not apply to an image (a PNG's JPEG quality)
    if values.size == 0:
        return ValueShift(name, 0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, reference.expected_ood_rate)
    ks = stats.ks_2samp(values, reference.sample)
    effect = effect_size(values, reference)
    return ValueShift(
        name=name,
        images=int(values.size),
        ks_distance=float(ks.statistic),
        ks_p=float(ks.pvalue),
        median_shift=effect.median_shift,
        psi=effect.psi,
        wasserstein=effect.wasserstein,
        outside=effect.ood_rate,
        expected_outside=effect.expected_ood_rate,
    )
