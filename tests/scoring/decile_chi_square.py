"""A test-only window test, to show that a new test is one file: chi-square of the window's counts in the
reference's decile bins (fitted: the bin edges), for values with ten distinct deciles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from scoring.references import ScoreReference
from scoring.window_tests import WindowTest, WindowTestResult, register_window_test


@register_window_test
class DecileChiSquare(WindowTest):
    name = "decile_chi_square"
    statistic = "chi-square distance of the window's decile counts from a tenth each"

    def fit(self, reference: ScoreReference) -> dict[str, Any] | None:
        edges = np.quantile(reference.sample, np.linspace(0.1, 0.9, 9))
        if np.unique(edges).size < edges.size:
            return None  # a value with ties at its deciles (an image size): the bins would not hold a tenth each
        return {"edges": edges.tolist()}

    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        counts = np.bincount(np.searchsorted(state["edges"], window, side="right"), minlength=10)
        result = stats.chisquare(counts)
        return WindowTestResult(float(result.statistic), float(result.pvalue))
