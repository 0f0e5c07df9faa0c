"""Kernel two-sample test on the projected penultimate features: has the window's feature distribution moved?

The maximum mean discrepancy (Gretton et al., JMLR 2012, https://jmlr.org/papers/v13/gretton12a.html) with a
Gaussian kernel compares whole distributions in feature space, so it sees shifts that move no single score: a
new kind of input the head is confident about, pixelation, fog. The bandwidth is the median distance between
reference features (the median heuristic), fixed at calibration so every window is measured with one kernel; the
p-value is a permutation test's, with the kernel matrix of the pooled window and reference computed once per window,
and its reference x reference block once per reference.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from scoring.permutation import permutation_p_value, permutation_p_value_at_most
from scoring.references import ScoreReference
from scoring.window_tests import WindowTest, WindowTestResult, register_window_test

# The bandwidth's median is taken over the distances among at most this many reference vectors: the median of
# 500·499/2 distances is stable to a few percent, and the full matrix of a large reference is not needed.
_BANDWIDTH_SAMPLE = 500


def squared_distances(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    squared = (left**2).sum(1)[:, None] + (right**2).sum(1)[None, :] - 2 * left @ right.T
    return np.maximum(squared, 0.0)


def median_bandwidth(sample: np.ndarray) -> float:
    """The median distance between distinct reference vectors (1.0 when they all coincide)."""
    picked = sample[np.random.default_rng(0).permutation(len(sample))[:_BANDWIDTH_SAMPLE]]
    distances = squared_distances(picked, picked)[np.triu_indices(len(picked), k=1)]
    median = float(np.sqrt(np.median(distances))) if distances.size else 0.0
    return median if median > 0 else 1.0


class _ReferenceKernel:
    """The reference's own part of the pooled kernel matrix, and that part's sum over each relabelling's reference
    members: the same for every window tested against this reference, so computed once.

    The within-window sum of a relabelling splits by where its members come from: window x window, window x
    reference, and reference x reference, the last a product with the (m, m) reference block that does not depend on
    the window. Recomputed per window, that block cost most of the reference check: 300 windows against 500 reference
    features took 110 of 160 s (profiled) in the matrix product of the whole (n + m)^2 kernel per relabelling.
    """

    def __init__(self, reference_sample: np.ndarray, bandwidth: float) -> None:
        self.sample = np.asarray(reference_sample, np.float64)
        self.scale = 2 * bandwidth**2
        self.kernel = np.exp(-squared_distances(self.sample, self.sample) / self.scale)
        self.row_sums = self.kernel.sum(axis=1)
        self.total = float(self.kernel.sum())
        self._within: dict[tuple[int, bytes], np.ndarray] = {}
        self._lock = threading.Lock()

    def within(self, members: np.ndarray, window_size: int) -> np.ndarray:
        """Per relabelling, the kernel summed over its pairs of reference members (indices >= window_size)."""
        key = (window_size, hashlib.blake2b(np.ascontiguousarray(members).tobytes(), digest_size=16).digest())
        with self._lock:
            cached = self._within.get(key)
        if cached is None:
            in_reference = np.zeros((len(members), len(self.sample)))
            rows, places = np.nonzero(members >= window_size)
            in_reference[rows, members[rows, places] - window_size] = 1.0
            cached = np.einsum("bi,bi->b", in_reference @ self.kernel, in_reference)
            with self._lock:
                if len(self._within) >= _WITHIN_KEPT:
                    self._within.clear()
                self._within[key] = cached
        return cached


# Relabelling blocks whose reference sums are kept per reference: 20 blocks in 5 slices for each of a few sizes.
_WITHIN_KEPT = 1_000
# References whose kernels are kept: the check's features reference, per segment, and the live monitor's.
_REFERENCE_KERNELS_KEPT = 4
_reference_kernels: OrderedDict[tuple[bytes, float], _ReferenceKernel] = OrderedDict()
_reference_kernels_lock = threading.Lock()


def _reference_kernel(reference_sample: np.ndarray, bandwidth: float) -> _ReferenceKernel:
    sample = np.ascontiguousarray(reference_sample, np.float64)
    key = (hashlib.blake2b(sample.tobytes() + repr(sample.shape).encode(), digest_size=16).digest(), bandwidth)
    with _reference_kernels_lock:
        kernel = _reference_kernels.get(key)
        if kernel is not None:
            _reference_kernels.move_to_end(key)
            return kernel
    kernel = _ReferenceKernel(sample, bandwidth)
    with _reference_kernels_lock:
        _reference_kernels[key] = kernel
        while len(_reference_kernels) > _REFERENCE_KERNELS_KEPT:
            _reference_kernels.popitem(last=False)
    return kernel


def _mmd_statistics(
    window: np.ndarray, reference_sample: np.ndarray, bandwidth: float
) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    """The observed squared MMD, and the squared MMD of relabellings (indices into window then reference)."""
    reference = _reference_kernel(reference_sample, bandwidth)
    window = np.asarray(window, np.float64)
    n, m = len(window), len(reference.sample)
    window_kernel = np.exp(-squared_distances(window, window) / reference.scale)
    cross_kernel = np.exp(-squared_distances(window, reference.sample) / reference.scale)
    row_sums = np.concatenate(
        [window_kernel.sum(axis=1) + cross_kernel.sum(axis=1), cross_kernel.sum(axis=0) + reference.row_sums]
    )
    total = float(window_kernel.sum()) + 2 * float(cross_kernel.sum()) + reference.total

    def squared_mmd(members: np.ndarray) -> np.ndarray:
        # With weights a = 1/n on the window and -1/m on the reference, MMD² = aᵀKa = c²·Σ_window K - 2(c/m)·Σ_window
        # rows + ΣK/m², c = 1/n + 1/m. The window's sum of K goes through matrix products per block of
        # relabellings (gathering the n² entries of each took 17 and 230 ms for 250 relabellings at n = 100 and 250,
        # against 3.6 and 5.0 for the product), its reference x reference part kept per reference.
        c = 1 / n + 1 / m
        in_window = np.zeros((len(members), n + m))
        in_window[np.arange(len(members))[:, None], members] = 1.0
        from_window, from_reference = in_window[:, :n], in_window[:, n:]
        within = (
            np.einsum("bi,bi->b", from_window @ window_kernel, from_window)
            + 2 * np.einsum("bi,bi->b", from_window @ cross_kernel, from_reference)
            + reference.within(members, n)
        )
        return c**2 * within - 2 * c / m * (in_window @ row_sums) + total / m**2

    return float(squared_mmd(np.arange(n)[None, :])[0]), squared_mmd


def mmd_test(window: np.ndarray, reference_sample: np.ndarray, bandwidth: float) -> WindowTestResult:
    """The (biased) MMD between window and reference under a Gaussian kernel, and its permutation p-value."""
    observed, squared_mmd = _mmd_statistics(window, reference_sample, bandwidth)
    n = len(window)
    p_value = permutation_p_value(observed, squared_mmd, n + len(reference_sample), n)
    mmd = float(np.sqrt(max(observed, 0.0)))
    return WindowTestResult(mmd, p_value, f"features moved: MMD {mmd:.3f}, p {p_value:.2g}")


@register_window_test
class MaximumMeanDiscrepancy(WindowTest):
    name = "mmd"
    statistic = "maximum mean discrepancy between the window's and the reference's features (Gaussian kernel)"
    kinds = frozenset({"vector"})
    resampled = True

    def fit(self, reference: ScoreReference) -> dict[str, Any]:
        return {"bandwidth": median_bandwidth(reference.sample)}

    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        return mmd_test(window, reference.sample, state["bandwidth"])

    def fires_at(self, level: float, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> bool:
        observed, squared_mmd = _mmd_statistics(window, reference.sample, state["bandwidth"])
        n = len(window)
        return permutation_p_value_at_most(level, observed, squared_mmd, n + len(reference.sample), n)
