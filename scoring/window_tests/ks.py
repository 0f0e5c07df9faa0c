"""Two-sample Kolmogorov-Smirnov test: does the window's distribution of a score differ from the reference's?

Sensitive to any change of shape or location, in either direction; its power grows with the window's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from scoring.references import ScoreReference
from scoring.window_tests import WindowTest, WindowTestResult, register_window_test


def ks_test(window: np.ndarray, reference: ScoreReference) -> WindowTestResult:
    """The KS distance between the two empirical CDFs, and its exact or asymptotic p-value (scipy's choice)."""
    result = stats.ks_2samp(window, reference.sample)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return WindowTestResult(
        statistic, p_value, f"{reference.median_moved(window)} (KS {statistic:.2f}, p {p_value:.2g})"
    )


@register_window_test
class KolmogorovSmirnov(WindowTest):
    name = "ks"
    statistic = "largest distance between the window's and the reference's CDFs"

    def fit(self, reference: ScoreReference) -> dict[str, Any]:
        return {}  # the reference sample is all it compares against

    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        return ks_test(window, reference)
