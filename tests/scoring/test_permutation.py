"""The relabellings a permutation test draws, and whether its p-value is at most a level."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.permutation import (
    FIRST_SLICE,
    MAX_PERMUTATIONS,
    PERMUTATION_BLOCK,
    _relabelled_windows,
    permutation_p_value,
    permutation_p_value_at_most,
)


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


def _mean_statistic(values: np.ndarray):
    return lambda members: values[members].mean(axis=1)


# p-values 0.66, 0.21 and 0.017; 4e-4 and 0.0038 (every permutation drawn); 0.0056 (stopped at 20 exceeding after
# many blocks); 2e-4 (none exceeding).
@pytest.mark.parametrize(("shift", "seed"), [(0.0, 0), (0.4, 4), (0.7, 7), (0.8, 2), (0.8, 4), (0.8, 7), (1.5, 15)])
def test_whether_a_p_value_is_at_most_a_level_is_that_p_values_answer(shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    window, reference = rng.normal(shift, 1, 30), rng.normal(0, 1, 300)
    values = np.concatenate([window, reference])
    statistic = _mean_statistic(values)
    observed = float(window.mean())
    p_value = permutation_p_value(observed, statistic, values.size, window.size)
    # Holm's first levels over 50, 30 and 2 tests at alpha 1%, levels either side of where the stopping rule
    # stops (21 exceeding of 5000), and the p-value itself.
    for level in (2e-4, 1 / 3000, 0.004, 0.005, 0.01, 0.05, 0.5, p_value):
        assert permutation_p_value_at_most(level, observed, statistic, values.size, window.size) == (p_value <= level)


def test_a_settled_answer_stops_at_once_and_an_unsettled_one_draws_what_the_p_value_does() -> None:
    seen: list[int] = []

    def counting(members: np.ndarray) -> np.ndarray:
        seen.append(len(members))
        return np.zeros(len(members))

    # Every relabelling reaches the observed statistic: one more than none already rules out p <= 1/3000.
    assert not permutation_p_value_at_most(1 / 3000, 0.0, counting, 10, 3)
    assert sum(seen) == FIRST_SLICE
    seen.clear()
    # None does: only the last permutation settles it, as the p-value's own count.
    assert permutation_p_value_at_most(1 / 3000, 1.0, counting, 10, 3)
    assert sum(seen) == MAX_PERMUTATIONS
    # The first block in growing slices, the others whole.
    assert FIRST_SLICE == 8
    assert PERMUTATION_BLOCK == 250
    assert seen == [8, 16, 32, 64, 128, 2, *[250] * 18, 249]
