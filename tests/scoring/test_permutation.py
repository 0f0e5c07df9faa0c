"""The relabellings a permutation test draws."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.permutation import _relabelled_windows


@pytest.mark.parametrize(("pooled", "window"), [(40, 5), (40, 30)])  # a partial shuffle, and a whole one
def test_each_relabelling_is_a_uniform_subset_of_distinct_members(pooled: int, window: int) -> None:
    rng = np.random.default_rng(1)
    drawn = np.concatenate([_relabelled_windows(rng, 250, pooled, window) for _ in range(200)])
    assert drawn.shape == (50_000, window)
    assert all(len(set(row)) == window for row in drawn[:2000])
    counts = np.bincount(drawn.ravel(), minlength=pooled)
    expected = drawn.size / pooled
    # Each member is in a window as often as any other: within 5 standard deviations of a binomial count.
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # And every place of the window sees every member: the first place is not biased to low indices.
    first = np.bincount(drawn[:, 0], minlength=pooled)
    assert np.abs(first - len(drawn) / pooled).max() < 5 * np.sqrt(len(drawn) / pooled)
