from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from scoring.separation import aupr_in, aupr_out, auroc, average_precision, fpr_at_tpr


def test_auroc_is_the_mann_whitney_statistic() -> None:
    rng = np.random.default_rng(0)
    in_scores, out_scores = rng.normal(1, 1, 300), np.round(rng.normal(0, 1, 200), 1)
    expected = mannwhitneyu(in_scores, out_scores).statistic / (300 * 200)
    assert auroc(in_scores, out_scores) == pytest.approx(expected, rel=1e-12)


def test_auroc_extremes_and_ties() -> None:
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


def test_fpr_at_tpr_uses_the_exact_quantile() -> None:
    in_scores = np.arange(1, 101, dtype=float)  # threshold keeping 95 of 100 is 6
    out_scores = np.array([5.0, 6.0, 7.0, 0.0])
    assert fpr_at_tpr(in_scores, out_scores) == 0.5
    assert fpr_at_tpr(in_scores, out_scores, tpr=1.0) == 0.75


def test_separation_refuses_empty_or_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        fpr_at_tpr([1.0, np.nan], [1.0])


def test_average_precision_by_hand() -> None:
    # Ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = (1/2)(1/1) + (1/2)(2/3).
    assert average_precision([0.9, 0.7], [0.8, 0.1]) == pytest.approx(0.5 + 1 / 3)
    # One tie group holding everything: precision 1/2 at full recall.
    assert average_precision([1.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)


def test_aupr_in_and_out_of_a_perfect_score() -> None:
    assert aupr_in([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert aupr_out([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert aupr_out([1.0, 2.0], [3.0, 4.0]) == pytest.approx((1 / 3 + 2 / 4) / 2)
