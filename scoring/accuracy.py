"""A window's top-1 accuracy, estimated without labels from how confident the model is on it.

Two estimators from the literature, both read from the max-softmax probability (MSP) every scores table has:

- ATC (Garg et al., ICLR 2022, "Leveraging unlabeled data to predict out-of-distribution performance"): a threshold
  on the confidence fitted on a labelled reference so that the share of reference images below it equals the
  reference's error rate; a window's accuracy is estimated as its share of images at or above it.
- DoC (Guillory et al., ICCV 2021, "Predicting with confidence on unseen distributions"): the reference's accuracy
  minus how much the mean confidence fell.

Both need the reference's accuracy, so labels (``gradwatch calibrate --labels``) are needed for an estimate of the
accuracy itself. Without labels, the fall in mean confidence (DoC's difference) is still an estimate of how many
points of accuracy a window lost, and it is what severity reads. Both fail where a shift does not move confidence:
a model confidently wrong on blurred or noisy images looks as accurate as on healthy ones (see
``bench/eval_accuracy.py`` for the error per shift).

Every estimate carries a 95% interval from a two-sample bootstrap: the reference is resampled at calibration (each
replicate refits the ATC threshold and the reference's accuracy and mean confidence), the window at decision time,
and replicate b of the window is paired with replicate b of the reference. The interval is for the window's own
accuracy, which varies about its expected value as each image is right or wrong: ATC's replicates count images
above the threshold, and DoC's draw each image's outcome from its confidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# The score both estimators read: MSP at temperature 1, the confidence ATC and DoC were defined on.
CONFIDENCE = "msp"
# Bootstrap replicates: the percentile interval's ends move by under half a point of accuracy from 200 to 2,000 on
# the ImageNet samples, and 200 keeps the calibration document small.
REPLICATES = 200
# Below this many labelled images the reference's own accuracy is known to no better than about ±10 points.
MIN_LABELLED = 50


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95% bootstrap interval."""

    estimate: float
    low: float
    high: float

    def describe(self, digits: int = 2) -> str:
        return f"{self.estimate:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


@dataclass(frozen=True)
class AccuracyEstimate:
    """One window's (or one segment's) estimated accuracy.

    Attributes:
        images: how many images it was estimated from.
        confidence: the window's mean confidence (MSP).
        reference_confidence: the reference's.
        drop: the fall in mean confidence, reference minus window: DoC's estimate of the points of accuracy lost
            (positive: worse), available without labels.
        reference: the labelled reference's top-1 accuracy; None when the calibration had no labels.
        atc: ATC's estimate of the window's accuracy; None without labels.
        doc: DoC's estimate of the window's accuracy (reference accuracy minus ``drop``); None without labels.
    """

    images: int
    confidence: float
    reference_confidence: float
    drop: Interval
    reference: float | None = None
    atc: Interval | None = None
    doc: Interval | None = None

    def describe(self) -> str:
        """In words, for an alert: "estimated accuracy 0.61 (0.55-0.67) against 0.83". ATC's: on the bench it is
        within DoC's error on the corruptions and far closer on new kinds of input (DTD, EuroSAT), where the model
        stays confident and DoC reads least of the loss."""
        if self.atc is not None and self.reference is not None:
            return f"estimated accuracy {self.atc.describe()} against {self.reference:.2f}"
        confidence = f"mean confidence {self.confidence:.2f} against {self.reference_confidence:.2f}"
        if self.drop.estimate <= 0:
            return f"{confidence}: confidence shows no loss of accuracy"
        return (
            f"{confidence}: accuracy down by about {100 * self.drop.estimate:.0f} points "
            f"({100 * self.drop.low:.0f} to {100 * self.drop.high:.0f})"
        )


@dataclass(frozen=True)
class AccuracyModel:
    """What the estimators learned on the reference, kept in the calibration document.

    Attributes:
        reference_confidence: the reference's mean confidence.
        reference_accuracy: its top-1 on the labelled images; None without labels.
        threshold: ATC's confidence threshold; None without labels.
        labelled: how many reference images had a label.
        replicates: per bootstrap replicate of the reference, (mean confidence, accuracy, ATC threshold), the
            last two NaN without labels.
    """

    reference_confidence: float
    reference_accuracy: float | None
    threshold: float | None
    labelled: int
    replicates: tuple[tuple[float, float, float], ...]

    @property
    def has_labels(self) -> bool:
        return self.reference_accuracy is not None

    def estimate(self, confidences: np.ndarray, *, seed: int = 0) -> AccuracyEstimate:
        """The accuracy of images with these confidences, estimated.

        The seed is fixed by default, so a retried window gets the same interval.
        """
        values = np.asarray(confidences, np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("no finite confidences to estimate accuracy from")
        rng = np.random.default_rng(seed)
        reps = np.asarray(self.replicates, np.float64)
        resampled = values[rng.integers(0, values.size, (reps.shape[0], values.size))]
        window_mean = resampled.mean(axis=1)
        drop = _interval(self.reference_confidence - values.mean(), reps[:, 0] - window_mean)
        if not self.has_labels:
            return AccuracyEstimate(values.size, float(values.mean()), self.reference_confidence, drop)
        atc_replicates = (resampled >= reps[:, 2:3]).mean(axis=1)
        atc = _interval(float(np.mean(values >= self.threshold)), atc_replicates)
        # A window's own accuracy varies about what its confidences say even when they say it right: each image is
        # right or wrong, so DoC's replicates draw the outcomes a calibrated model's confidences give.
        outcomes = (rng.random(resampled.shape) < resampled).mean(axis=1)
        doc = _interval(self.reference_accuracy - drop.estimate, reps[:, 1] - reps[:, 0] + outcomes)
        return AccuracyEstimate(
            values.size, float(values.mean()), self.reference_confidence, drop, self.reference_accuracy, atc, doc
        )

    def describe(self) -> str:
        """For ``gradwatch thresholds show``."""
        if not self.has_labels:
            return (
                f"no labels: the fall in mean confidence (DoC) from the reference's {self.reference_confidence:.3f} "
                "estimates the accuracy lost; calibrate with --labels for the accuracy itself"
            )
        return (
            f"ATC threshold {self.threshold:.4f} on {CONFIDENCE}; reference top-1 {self.reference_accuracy:.3f} "
            f"on {self.labelled} labelled images, mean confidence {self.reference_confidence:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "replicates": [list(entry) for entry in self.replicates]}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> AccuracyModel:
        return cls(
            reference_confidence=entry["reference_confidence"],
            reference_accuracy=entry["reference_accuracy"],
            threshold=entry["threshold"],
            labelled=entry["labelled"],
            replicates=tuple(tuple(float(value) for value in replicate) for replicate in entry["replicates"]),
        )


def atc_threshold(confidences: np.ndarray, correct: np.ndarray) -> float:
    """The confidence below which the share of images equals the error rate (ATC's threshold)."""
    error = 1.0 - float(np.mean(correct))
    ordered = np.sort(confidences)
    # The count below the threshold is round(error * n): the threshold sits at that order statistic, so that
    # images tied with it count as at or above it, as the estimate reads them.
    below = min(ordered.size - 1, round(error * ordered.size))
    return float(ordered[below]) if below > 0 else -math.inf


def fit_accuracy(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[float] | np.ndarray | None = None,
    *,
    replicates: int = REPLICATES,
    seed: int = 0,
) -> AccuracyModel:
    """Fit ATC and DoC on reference confidences, and bootstrap replicates of what they learned.

    Args:
        confidences: the reference images' MSP.
        correct: per reference image, 1.0 when the model's prediction matches its label, 0.0 when not, NaN when
            it has no label; None when nothing is labelled (only the fall in confidence can then be estimated).
        replicates: bootstrap replicates of the reference, for the estimates' intervals.
        seed: of the bootstrap, fixed so that one reference always gives one calibration.

    Raises:
        ValueError: fewer than ``MIN_LABELLED`` labelled images where labels were given, or no confidences.
    """
    values = np.asarray(confidences, np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"the reference's {CONFIDENCE} must be finite, one value per image, and there must be some")
    rng = np.random.default_rng(seed)
    labels = None if correct is None else np.asarray(correct, np.float64)
    if labels is not None and labels.shape != values.shape:
        raise ValueError(f"correct has {labels.size} entries for {values.size} reference images: one per image")
    labelled = np.isfinite(labels) if labels is not None else np.zeros(values.size, bool)
    if labels is not None and labelled.sum() < MIN_LABELLED:
        raise ValueError(
            f"only {int(labelled.sum())} reference images have a label: at least {MIN_LABELLED} are needed to "
            "estimate accuracy; label more of them, or calibrate without --labels"
        )
    # Confidence is bootstrapped over every reference image, accuracy and the ATC threshold over the labelled ones.
    sample = values[rng.integers(0, values.size, (replicates, values.size))].mean(axis=1)
    if not labelled.any():
        table = tuple((float(mean), math.nan, math.nan) for mean in sample)
        return AccuracyModel(float(values.mean()), None, None, 0, table)
    known, right = values[labelled], labels[labelled]
    rows = []
    for mean in sample:
        picked = rng.integers(0, known.size, known.size)
        rows.append((float(mean), float(right[picked].mean()), atc_threshold(known[picked], right[picked])))
    return AccuracyModel(
        float(values.mean()), float(right.mean()), atc_threshold(known, right), int(labelled.sum()), tuple(rows)
    )


def _interval(estimate: float, replicates: np.ndarray) -> Interval:
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Interval(float(estimate), float(low), float(high))
