"""Window tests, registered by name: each is fitted on a score's reference and applied to a window's values.

A test is a pure function of (window values, reference, fitted state) plus a thin class that names it and fits
its state, the way Alibi Detect's detectors and TorchDrift's tests are built. Calibration fits every registered
test on every score's reference and keeps the state in the calibration document; a window is decided with the
tests its calibration was fitted with, all Holm-corrected together (:func:`scoring.drift.decide_window`), and
each returns the same :class:`WindowTestResult`.

A new test is one new file in this package whose class subclasses :class:`WindowTest` and is decorated with
:func:`register_window_test`; every module here is imported with the package.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scoring.references import ScoreReference, ValueKind


@dataclass(frozen=True)
class WindowTestResult:
    """What a test says of one window: its statistic, the p-value under "drawn from the reference", and what moved,
    in words a person reads ("sharpness fell 2.1 IQR below the reference median"); a test that leaves it empty is
    described by its statistic and p-value."""

    statistic: float
    p_value: float
    summary: str = ""


class WindowTest(ABC):
    """One kind of test of a window's values of one score against that score's reference.

    Attributes:
        name: the test's name in decisions, metrics and alerts.
        statistic: what the statistic measures, in a few words, for the people who read the decisions.
        kinds: the kinds of value it tests (a number per image by default; the projected features are vectors, the
            predictions classes); it is fitted on no other.
        resampled: whether its p-value is a permutation test's, which costs many times an analytic one.
    """

    name: ClassVar[str]
    statistic: ClassVar[str]
    kinds: ClassVar[frozenset[ValueKind]] = frozenset({"scalar"})
    # Whether the p-value comes from resampling (permutations): asked last, when nothing cheaper decided the window.
    resampled: ClassVar[bool] = False

    @abstractmethod
    def fit(self, reference: ScoreReference) -> dict[str, Any] | None:
        """What the test keeps from the reference beyond the reference itself: a JSON-serialisable state; None where
        the test does not apply to it (a test on deciles, say, of a value that takes three values), which then
        leaves that value to the other tests."""

    @abstractmethod
    def apply(self, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> WindowTestResult:
        """Test a window's finite values against the reference, with the state :meth:`fit` returned."""

    def fires_at(self, level: float, window: np.ndarray, reference: ScoreReference, state: Mapping[str, Any]) -> bool:
        """Whether :meth:`apply`'s p-value is at most ``level``: all a resampled decision asks (the reference check).
        A test whose p-value is costly to pin down answers once it is settled, and says so by ``resampled``."""
        return self.apply(window, reference, state).p_value <= level


_REGISTRY: dict[str, WindowTest] = {}


def register_window_test(kind: type[WindowTest]) -> type[WindowTest]:
    """Class decorator registering a window test under its ``name``."""
    if kind.name in _REGISTRY:
        raise ValueError(f"window test {kind.name!r} is registered twice; rename one of them")
    _REGISTRY[kind.name] = kind()
    return kind


def registered_window_tests() -> dict[str, WindowTest]:
    """Every registered window test by name, in the order they were registered (this package's by module name)."""
    return dict(_REGISTRY)


def window_test(name: str) -> WindowTest:
    """The registered test of that name.

    Raises:
        ValueError: none is, naming the registered ones and the fix.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"the calibration was fitted with window test {name!r}, which this gradwatch does not have "
            f"(it has {sorted(_REGISTRY)}); install the version that calibrated it, or calibrate again"
        ) from None


# Last, because each test module imports the base class from this package.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
