"""Permutation p-values that stop early once a window is plainly not significant (Besag & Clifford, Biometrika 1991,
https://doi.org/10.1093/biomet/78.2.301).

A permutation test is exact for any statistic: under "window and reference are drawn from one distribution" every
relabelling of the pooled sample is equally likely. Its smallest p-value is 1 / (permutations + 1), so the test can
fire only if enough permutations are run for that to clear its Holm level; a healthy window, whose statistic many
permutations exceed, shows that after a few hundred, and stops there.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

# The smallest p-value is 1/5000 = 2e-4: at alpha = 1% that clears Holm's first level over up to 50 tests.
MAX_PERMUTATIONS = 4999
# Permutations evaluated together: one matrix product each for the kernel and class tests.
PERMUTATION_BLOCK = 250
# Stop once this many permutations reach the observed statistic: the p-value is then at least 20 / (done + 1),
# far above any Holm level a test of this family is compared to before its last step.
STOP_AFTER_EXCEEDING = 20
# Rows of a block a test asked only whether it fires evaluates first (then twice as many each time).
FIRST_SLICE = 8
# A fixed seed: a retried window gets the same p-value, so its decision does not change between attempts.
PERMUTATION_SEED = 0


def permutation_p_value(
    observed: float,
    statistics: Callable[[np.ndarray], np.ndarray],
    pooled_size: int,
    window_size: int,
    *,
    max_permutations: int = MAX_PERMUTATIONS,
) -> float:
    """P(a relabelling's statistic >= the observed one), sequentially estimated.

    Args:
        observed: the statistic of the pooled sample as labelled (the window first, then the reference).
        statistics: (B, window_size) indices into the pooled sample, each row the members one relabelling puts in
            the window -> their (B,) statistics. Indices rather than labels, so a statistic can cost what the
            window's size costs rather than the pooled sample's.
        pooled_size: window and reference together.
        window_size: members of the window.
        max_permutations: most relabellings drawn.

    Returns:
        (1 + relabellings at or above observed) / (1 + relabellings drawn).
    """
    counts = _exceedances(observed, statistics, pooled_size, window_size, max_permutations, whole=True)
    exceeding, done = (deque(counts, maxlen=1) or [(0, 0)])[-1]
    return (1 + exceeding) / (1 + done)


def permutation_p_value_at_most(
    level: float,
    observed: float,
    statistics: Callable[[np.ndarray], np.ndarray],
    pooled_size: int,
    window_size: int,
    *,
    max_permutations: int = MAX_PERMUTATIONS,
) -> bool:
    """Whether :func:`permutation_p_value` of the same arguments is at most ``level``, stopping once that is settled.

    Only whether a test fires is asked of it where a window's decision is resampled hundreds of times (the reference
    check). The relabellings are those :func:`permutation_p_value` draws, in its order and with its stopping rule,
    so the answer is its answer, not an estimate of it: the count of relabellings at or above the observed statistic
    only grows, so once (1 + that count) / (1 + max_permutations), the smallest p-value still reachable, exceeds
    ``level``, it is settled that the test does not fire. At Holm's first level over some 30 tests of a window
    (alpha 1%: 3e-4) that is one relabelling at or above the observed statistic, which a healthy window shows
    within a few relabellings; the first block is evaluated in growing slices so it can stop there. A test that
    fires still runs every permutation its p-value needs.
    """
    counts = (0, 0)
    for counts in _exceedances(observed, statistics, pooled_size, window_size, max_permutations, whole=False):
        if (1 + counts[0]) / (1 + max_permutations) > level:
            return False
    exceeding, done = counts
    return (1 + exceeding) / (1 + done) <= level


def _exceedances(
    observed: float,
    statistics: Callable[[np.ndarray], np.ndarray],
    pooled_size: int,
    window_size: int,
    max_permutations: int,
    *,
    whole: bool,
) -> Iterator[tuple[int, int]]:
    """(relabellings at or above observed, relabellings evaluated) as the evaluation goes: after each block when
    ``whole``, else after each growing slice of the first block and each block after; the last pair is where the
    stopping rule stops."""
    relabellings = _relabellings(pooled_size, window_size, max_permutations)
    # Ties within rounding count as exceeding: the observed labelling is itself one relabelling.
    tolerance = 1e-12 * max(1.0, abs(observed))
    exceeding = done = 0
    while done < max_permutations and exceeding < STOP_AFTER_EXCEEDING:
        members = relabellings.block(done // PERMUTATION_BLOCK)
        block = len(members)
        for rows in _growing_slices(block) if not whole and done == 0 else [slice(0, block)]:
            exceeding += int(np.sum(statistics(members[rows]) >= observed - tolerance))
            yield exceeding, done + rows.stop
        done += block


class _Relabellings:
    """The blocks of relabellings every permutation test of one pooled and window size draws, in order, drawn once.

    The seed is fixed, so every window of a size draws the same relabellings: the reference check's 100 windows of
    a size drew them 100 times (9 of 36 s over 300 windows on bench/monitor.py's OUT), and kept, a statistic can
    keep what it computed of them too (the kernel test's reference part).
    """

    def __init__(self, pooled_size: int, window_size: int, max_permutations: int) -> None:
        self._rng = np.random.default_rng(PERMUTATION_SEED)
        self._sizes = (pooled_size, window_size, max_permutations)
        self._blocks: list[np.ndarray] = []
        # Two threads drawing at once would interleave the stream, and a window's p-value would depend on timing.
        self._drawing = threading.Lock()

    def block(self, index: int) -> np.ndarray:
        """The index-th block: (up to PERMUTATION_BLOCK, window_size) indices, read-only."""
        pooled_size, window_size, max_permutations = self._sizes
        with self._drawing:
            return self._drawn(index, pooled_size, window_size, max_permutations)

    def _drawn(self, index: int, pooled_size: int, window_size: int, max_permutations: int) -> np.ndarray:
        while len(self._blocks) <= index:
            block = min(PERMUTATION_BLOCK, max_permutations - PERMUTATION_BLOCK * len(self._blocks))
            members = _relabelled_windows(self._rng, block, pooled_size, window_size).copy()  # not a view of them all
            members.flags.writeable = False
            self._blocks.append(members)
        return self._blocks[index]


# A few window sizes at a time: the check's three, the live windows' few; 20 blocks of 250 x 250 are 10 MB.
@functools.lru_cache(maxsize=8)
def _relabellings(pooled_size: int, window_size: int, max_permutations: int) -> _Relabellings:
    return _Relabellings(pooled_size, window_size, max_permutations)


def _growing_slices(block: int) -> list[slice]:
    """The first block's rows in slices of 8, 16, 32...: a settled answer stops after few relabellings. Later blocks
    are whole: a test still unsettled after a block is one that fires, or all but fires, and runs them all."""
    slices, start, size = [], 0, FIRST_SLICE
    while start < block:
        slices.append(slice(start, min(block, start + size)))
        start, size = start + size, 2 * size
    return slices


def _relabelled_windows(rng: np.random.Generator, block: int, pooled_size: int, window_size: int) -> np.ndarray:
    """(block, window_size) indices, each row a uniformly random window_size-subset of the pooled sample, in
    random order.

    A window is small beside its reference: shuffling only the first window_size places (a partial Fisher-Yates
    shuffle, one vectorised swap per place) draws the same subsets as shuffling whole rows, which cost most of a
    window's decision (a 50-image window against 1,000 reference images: 20 of 49 s over 300 windows).
    """
    if window_size * 4 > pooled_size:
        return rng.permuted(np.broadcast_to(np.arange(pooled_size), (block, pooled_size)), axis=1)[:, :window_size]
    indices = np.tile(np.arange(pooled_size), (block, 1))
    rows = np.arange(block)
    for place in range(window_size):
        chosen = rng.integers(place, pooled_size, size=block)
        displaced = indices[rows, place].copy()
        indices[rows, place] = indices[rows, chosen]
        indices[rows, chosen] = displaced
    return indices[:, :window_size]
