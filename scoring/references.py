"""The healthy distribution of one score: its sorted reference sample, per-image threshold and direction.

Every window test is fitted on a :class:`ScoreReference` and keeps its fitted state in it, so one object per
(segment, score) is what the calibration document holds and what a window is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ScoreReference:
    """The healthy distribution of one score, its per-image threshold, and each window test's fitted state.

    Attributes:
        score: the score's name.
        threshold: per-image OOD threshold: an image is out of distribution below it (above it when
            ``higher_is_in_distribution`` is False).
        expected_ood_rate: share of reference images on the out-of-distribution side (about 1 - TPR).
        sample: reference scores, sorted; the data window tests compare against.
        higher_is_in_distribution: the score's direction, as registered.
        tests: what each window test learned here, by test name (see :mod:`scoring.window_tests`).
    """

    score: str
    threshold: float
    expected_ood_rate: float
    sample: np.ndarray
    higher_is_in_distribution: bool = True
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def is_out_of_distribution(self, values: np.ndarray) -> np.ndarray:
        """Per value, whether it falls on the out-of-distribution side of the threshold."""
        values = np.asarray(values, np.float64)
        return values < self.threshold if self.higher_is_in_distribution else values > self.threshold

    def oriented(self, values: np.ndarray) -> np.ndarray:
        """``values`` turned so that higher means in distribution, as separation measures read them."""
        values = np.asarray(values, np.float64)
        return values if self.higher_is_in_distribution else -values

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "expected_ood_rate": self.expected_ood_rate,
            "higher_is_in_distribution": self.higher_is_in_distribution,
            "sample": self.sample.tolist(),
            "tests": self.tests,
        }

    @classmethod
    def from_dict(cls, score: str, document: dict[str, Any]) -> ScoreReference:
        return cls(
            score,
            document["threshold"],
            document["expected_ood_rate"],
            np.asarray(document["sample"], np.float64),
            document.get("higher_is_in_distribution", True),
            document.get("tests", {}),
        )


def score_reference(
    score: str, values: np.ndarray, tpr: float, *, higher_is_in_distribution: bool = True
) -> ScoreReference:
    """The reference of one score, thresholded to keep ``tpr`` of the reference on the in-distribution side.

    The threshold is the value with at least ``tpr`` of the reference at or above it (at or below it for a score
    that is low in distribution), so exactly that share is kept, as FPR95 is defined.
    """
    ordered = np.sort(np.asarray(values, np.float64))
    if ordered.size == 0 or not np.isfinite(ordered).all():
        raise ValueError(f"reference scores of {score!r} must be non-empty and finite")
    rank = math.floor(ordered.size * (1 - tpr) + 1e-9)
    threshold = float(ordered[rank] if higher_is_in_distribution else ordered[ordered.size - 1 - rank])
    unfitted = ScoreReference(score, threshold, 0.0, ordered, higher_is_in_distribution)
    return replace(unfitted, expected_ood_rate=float(np.mean(unfitted.is_out_of_distribution(ordered))))
