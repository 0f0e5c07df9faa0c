"""Chi-square test of the predicted classes, with a permutation p-value: has the window's mix of predictions moved?

Prediction drift is the signal every monitor has (a feed gone dark is predicted as one class). With a thousand
classes and windows of a hundred images most expected counts are far below 5, where the chi-square distribution is
no longer the statistic's null; relabelling the pooled window and reference gives its exact null instead, so no
class has to be pooled away. Which classes gained or lost share is what the test reports it saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from scoring.permutation import permutation_p_value, permutation_p_value_at_most
from scoring.references import ScoreReference
from scoring.window_tests import WindowTest, WindowTestResult, register_window_test

# Classes named in what a test saw: those whose share moved most.
_CLASSES_NAMED = 3


def class_shares_moved(window: np.ndarray, reference_sample: np.ndarray) -> list[tuple[int, float, float]]:
    """(class, reference share, window share) of the classes whose share moved most, largest move first."""
    classes, codes = np.unique(np.concatenate([window, reference_sample]), return_inverse=True)
    window_share = np.bincount(codes[: window.size], minlength=classes.size) / window.size
    reference_share = np.bincount(codes[window.size :], minlength=classes.size) / reference_sample.size
    moved = np.argsort(-np.abs(window_share - reference_share), kind="stable")[:_CLASSES_NAMED]
    return [(int(classes[i]), float(reference_share[i]), float(window_share[i])) for i in moved]


def _chi_square_statistics(
    window: np.ndarray, reference_sample: np.ndarray
) -> tuple[float, Callable[[np.ndarray], np.ndarray], int]:
    """The observed chi-square of the 2 x classes table, the statistic of relabellings, and the pooled size."""
    pooled = np.concatenate([window, reference_sample])
    _, codes = np.unique(pooled, return_inverse=True)
    classes = int(codes.max()) + 1
    totals = np.bincount(codes, minlength=classes).astype(np.float64)
    expected_window = totals * window.size / pooled.size
    expected_reference = totals - expected_window

    def chi_square(members: np.ndarray) -> np.ndarray:
        # Each relabelling's window counts by one bincount over all of them, offset per relabelling.
        offsets = np.arange(len(members))[:, None] * classes
        in_window = np.bincount((codes[members] + offsets).ravel(), minlength=len(members) * classes)
        in_window = in_window.reshape(len(members), classes).astype(np.float64)
        return (
            (in_window - expected_window) ** 2 / expected_window
            + (totals - in_window - expected_reference) ** 2 / expected_reference
        ).sum(axis=1)

    return float(chi_square(np.arange(window.size)[None, :])[0]), chi_square, pooled.size


def chi_square_test(window: np.ndarray, reference_sample: np.ndarray) -> WindowTestResult:
    """Pearson's chi-square of the 2 x classes table of window and reference predictions, p by permutation."""
    observed, chi_square, pooled_size = _chi_square_statistics(window, reference_sample)
    p_value = permutation_p_value(observed, chi_square, pooled_size, window.size)
    shares = ", ".join(
        f"class {label} {'rose' if after > before else 'fell'} from {before:.1%} to {after:.1%}"
        for label, before, after in class_shares_moved(window, reference_sample)
    )
    return WindowTestResult(
        observed, p_value, f"predictions moved: {shares} (chi-square {observed:.0f}, p {p_value:.2g})"
    )


@register_window_test
class ChiSquare(WindowTest):
    name = "chi_square"
    statistic = "Pearson's chi-square between the window's and the reference's predicted classes"
    kinds = frozenset({"categorical"})
    resampled = True

    def fit(self, reference: ScoreReference) -> dict[str, Any]:
        return {}

    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        return chi_square_test(np.asarray(window, np.int64), reference.sample)

    def fires_at(self, level: float, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> bool:
        values = np.asarray(window, np.int64)
        observed, chi_square, pooled_size = _chi_square_statistics(values, reference.sample)
        return permutation_p_value_at_most(level, observed, chi_square, pooled_size, values.size)
