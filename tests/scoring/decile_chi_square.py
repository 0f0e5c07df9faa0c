"""A test-only window test, to show that a new test is one file: chi-square of the window's counts in the
reference's decile bins (fitted: the bin edges) against the reference's own counts in them, for values with ten
distinct deciles. Two-sample, since the edges come from a finite reference: a goodness-of-fit test against a tenth
each ignores that and paged on a healthy window of SCALE against 105 reference images (p 7e-5)."""

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
    statistic = "chi-square distance between the window's and the reference's counts in the reference's deciles"

    def fit(self, reference: ScoreReference) -> dict[str, Any] | None:
        edges = np.quantile(reference.sample, np.linspace(0.1, 0.9, 9))
        if np.unique(edges).size < edges.size:
            return None  # a value with ties at its deciles (an image size): the bins would not hold a tenth each
        return {"edges": edges.tolist()}

    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        def counts(values: np.ndarray) -> np.ndarray:
            return np.bincount(np.searchsorted(state["edges"], values, side="right"), minlength=10)

        table = np.stack([counts(window), counts(reference.sample)])
        result = stats.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
        return WindowTestResult(float(result.statistic), float(result.pvalue))
