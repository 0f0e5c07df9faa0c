"""The healthy distribution of one measured value (a score, an image property, the projected features or the predicted
class): its reference sample, the per-image bounds of in-distribution, and each window test's fitted state.

Every window test is fitted on a :class:`ScoreReference` and keeps its fitted state in it, so one object per
(segment, value) is what the calibration document holds and what a window is tested against.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

# Where out-of-distribution values lie: below a score that is high in distribution ("low"), above one that is low
# in distribution ("high"), on either side of an image property, which has no good direction ("both"), or nowhere
# for a value no single image is out of distribution by (a feature vector, a predicted class): "none".
Side = Literal["low", "high", "both", "none"]
# What one image's value is: a number, a vector (the projected penultimate features) or a class (the prediction).
ValueKind = Literal["scalar", "vector", "categorical"]


@dataclass(frozen=True)
class ScoreReference:
    """The healthy distribution of one value, its per-image bounds, and each window test's fitted state.

    Attributes:
        score: the value's name (a score or an image property).
        lower: an image below it is out of distribution; None where nothing is too low.
        upper: an image above it is out of distribution; None where nothing is too high.
        expected_ood_rate: share of reference images outside the bounds (about 1 - TPR).
        sample: reference values, the data window tests compare against: sorted numbers, (M, D) vectors, or
            class indices.
        tests: what each window test learned here, by test name (see :mod:`scoring.window_tests`).
        kind: what one image's value is; a window test fits only the kinds it applies to.
    """

    score: str
    lower: float | None
    upper: float | None
    expected_ood_rate: float
    sample: np.ndarray
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind: ValueKind = "scalar"

    @property
    def side(self) -> Side:
        if self.kind != "scalar":
            return "none"
        if self.upper is None:
            return "low"
        return "high" if self.lower is None else "both"

    @property
    def threshold(self) -> float:
        """The one bound of a one-sided reference (a score's per-image threshold)."""
        if self.side in ("both", "none"):
            raise ValueError(f"{self.score} has no single threshold ({self.lower}, {self.upper}): read its bounds")
        return self.lower if self.upper is None else self.upper

    @property
    def bounds(self) -> int:
        """How many order statistics of the reference bound in-distribution: 1, or 2 for a two-sided value."""
        return 2 if self.side == "both" else 1

    def is_out_of_distribution(self, values: np.ndarray) -> np.ndarray:
        """Per value, whether it falls outside the bounds."""
        values = np.asarray(values, np.float64)
        outside = np.zeros(values.shape[:1], bool)
        if self.lower is not None:
            outside |= values < self.lower
        if self.upper is not None:
            outside |= values > self.upper
        return outside

    def oriented(self, values: np.ndarray) -> np.ndarray:
        """``values`` turned so that higher means in distribution, as separation measures read them; for a two-sided
        value, minus the distance from the reference median."""
        values = np.asarray(values, np.float64)
        if self.side == "both":
            return -np.abs(values - self.median)
        return values if self.side == "low" else -values

    def median_moved(self, window: np.ndarray) -> str:
        """How the window's median moved from the reference's, in reference IQRs and in words: "sharpness fell 2.1
        IQR below the reference median", and for a score, whether toward out of distribution."""
        iqr = self.iqr or float(np.std(self.sample)) or 1.0
        shift = (float(np.median(window)) - self.median) / iqr
        moved = f"{self.score} {'rose' if shift > 0 else 'fell'} {abs(shift):.1f} IQR "
        moved += f"{'above' if shift > 0 else 'below'} the reference median"
        if self.side in ("low", "high") and shift != 0:
            toward = (shift < 0) == (self.side == "low")
            moved += ", toward out of distribution" if toward else ", away from out of distribution"
        return moved

    # Kept once computed (the sample does not change): every test record's summary and every effect size read
    # them, thousands of times over a calibration's held-out windows.
    @functools.cached_property
    def median(self) -> float:
        return float(np.median(self.sample))

    @functools.cached_property
    def iqr(self) -> float:
        upper, lower = np.quantile(self.sample, [0.75, 0.25])
        return float(upper - lower)

    @functools.cached_property
    def decile_edges(self) -> np.ndarray:
        edges = np.quantile(self.sample, np.linspace(0.1, 0.9, 9))
        edges.flags.writeable = False
        return edges

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "expected_ood_rate": self.expected_ood_rate,
            "sample": self.sample.tolist(),
            "tests": self.tests,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, score: str, document: dict[str, Any]) -> ScoreReference:
        if "threshold" in document:  # format 1: every score high in distribution, its threshold a lower bound
            lower, upper = document["threshold"], None
        else:
            lower, upper = document["lower"], document["upper"]
        kind = document.get("kind", "scalar")
        sample = np.asarray(document["sample"], np.int64 if kind == "categorical" else np.float64)
        return cls(score, lower, upper, document["expected_ood_rate"], sample, document.get("tests", {}), kind)


def score_reference(score: str, values: np.ndarray, tpr: float, *, side: Side = "low") -> ScoreReference:
    """The reference of one value, bounded to keep ``tpr`` of the reference in distribution.

    A one-sided bound is the value with at least ``tpr`` of the reference at or above it (at or below it for a
    score low in distribution), so exactly that share is kept, as FPR95 is defined; a two-sided value keeps
    ``tpr`` between bounds that leave half the rest on each side.
    """
    ordered = np.sort(np.asarray(values, np.float64))
    if ordered.size == 0 or not np.isfinite(ordered).all():
        raise ValueError(f"reference values of {score!r} must be non-empty and finite")
    shed = (1 - tpr) / 2 if side == "both" else 1 - tpr
    rank = math.floor(ordered.size * shed + 1e-9)
    lower = float(ordered[rank]) if side in ("low", "both") else None
    upper = float(ordered[ordered.size - 1 - rank]) if side in ("high", "both") else None
    unfitted = ScoreReference(score, lower, upper, 0.0, ordered)
    return replace(unfitted, expected_ood_rate=float(np.mean(unfitted.is_out_of_distribution(ordered))))


def unbounded_reference(name: str, values: np.ndarray, kind: ValueKind) -> ScoreReference:
    """The reference of a vector or categorical value: its sample as it is, no per-image bounds."""
    dtype = np.int64 if kind == "categorical" else np.float64
    sample = np.asarray(values, dtype)
    if sample.shape[0] == 0 or (kind == "vector" and (sample.ndim != 2 or not np.isfinite(sample).all())):
        raise ValueError(f"reference values of {name!r} must be non-empty and, for vectors, (M, D) and finite")
    return ScoreReference(name, None, None, 0.0, sample, kind=kind)
