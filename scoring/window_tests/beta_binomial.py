"""Beta-binomial test of the OOD rate: do more of the window's images fall outside the per-image bounds than
healthy images would?

A bound is an order statistic of a finite reference, so the healthy OOD probability is not known exactly: with k
of n reference images past one bound it is Beta(k + 1, n - k) distributed, outside two it is Beta(k + 2, n - k - 1)
(the mass between two order statistics is Beta distributed), and a healthy window's count is beta-binomial. This is
exact for any continuous distribution; a plain binomial test at p = k / n would page too often when the reference
is small next to the window, and the beta-binomial tends to it as the reference grows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from scoring.references import ScoreReference
from scoring.window_tests import WindowTest, WindowTestResult, register_window_test


# Counts repeat (the reference check decides 300 windows of three sizes against the same references); freezing a
# scipy distribution per call cost 1 ms, 8 times what its survival function does.
@functools.lru_cache(maxsize=4096)
def ood_rate_p_value(ood: int, window_size: int, reference_ood: int, reference_size: int, bounds: int = 1) -> float:
    """P(at least ``ood`` of ``window_size`` healthy images are out of distribution), given that
    ``reference_ood`` of ``reference_size`` reference images were, outside ``bounds`` (1 or 2) order statistics."""
    shape = (window_size, reference_ood + bounds, reference_size - reference_ood - bounds + 1)
    return float(stats.betabinom.sf(ood - 1, *shape))


@register_window_test
class BetaBinomial(WindowTest):
    name = "beta_binomial"
    statistic = "share of the window's images outside the per-image bounds"

    def fit(self, reference: ScoreReference) -> dict[str, Any]:
        ood = int(np.sum(reference.is_out_of_distribution(reference.sample)))
        return {"reference_ood": ood, "reference_size": int(reference.sample.size), "bounds": reference.bounds}

    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        ood = int(np.sum(reference.is_out_of_distribution(window)))
        p_value = ood_rate_p_value(
            ood, window.size, state["reference_ood"], state["reference_size"], state.get("bounds", 1)
        )
        share = ood / window.size
        summary = (
            f"{share:.0%} of images outside {reference.score}'s healthy bounds, against "
            f"{reference.expected_ood_rate:.0%} of healthy ones (p {p_value:.2g})"
        )
        return WindowTestResult(share, p_value, summary)
