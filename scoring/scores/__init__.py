"""Per-image scores computed from one forward pass, registered by name.

A new score is one new file in this package that calls :func:`register`; every module here is
imported with the package, so nothing else needs to change.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import torch

Shared = TypeVar("Shared")


@dataclass(frozen=True)
class HeadOutputs:
    """What a batch's forward pass leaves at the classifier head, in float64.

    Attributes:
        features: (N, D) penultimate features h, the head's input.
        logits: (N, C) head outputs z = W·h + b.
        temperature: T of the scores that define one (GradNorm, Energy).
        weight: (C, D) the head's weight W, for scores that look at the features' place relative to it (ViM);
            None where the head does not expose it.
        bias: (C,) the head's bias b, for scores that rescale the features (SCALE); None for a head without one.
    """

    features: torch.Tensor
    logits: torch.Tensor
    temperature: float
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def shared(self, name: str, compute: Callable[[], Shared]) -> Shared:
        """``compute()``, once per batch under ``name``, for what one score reads of another (GradNorm reads its two
        factors, each a score of its own). What it returns is shared: read it, never change it in place."""
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    @cached_property
    def scaled_logits(self) -> torch.Tensor:
        return self.logits / self.temperature

    @cached_property
    def log_probs(self) -> torch.Tensor:
        """log softmax(z), at T = 1 as MSP defines it."""
        return torch.log_softmax(self.logits, dim=1)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def log_num_classes(self) -> float:
        return math.log(self.num_classes)


@dataclass(frozen=True)
class Score:
    """A named per-image score.

    Attributes:
        name: the column name in every output.
        compute: maps a batch's head outputs to an (N,) tensor; a fitted score's also takes what ``fit`` learned.
        higher_is_in_distribution: the direction thresholds, tests and separation read it in: an image is out of
            distribution below its threshold when True, above it when False.
        diagnostic: True for factors shown to people but never used in a drift decision.
        fit: for a score that learns statistics of the reference (a feature mean, a percentile): maps the
            reference's head outputs to a JSON-serialisable state, kept with the calibration and handed to
            ``compute`` wherever the score is computed. None for scores of the head outputs alone.
    """

    name: str
    compute: Callable[..., torch.Tensor]
    higher_is_in_distribution: bool = True
    diagnostic: bool = False
    fit: Callable[[HeadOutputs], dict[str, Any]] | None = None

    def __call__(self, head: HeadOutputs, fitted_scores: Mapping[str, Any]) -> torch.Tensor:
        """The score of a batch, given what every fitted score learned (by name)."""
        return self.compute(head) if self.fit is None else self.compute(head, fitted_scores[self.name])


_REGISTRY: dict[str, Score] = {}


def register(
    name: str,
    *,
    higher_is_in_distribution: bool = True,
    diagnostic: bool = False,
    fit: Callable[[HeadOutputs], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator registering ``compute`` as the score ``name``; see :class:`Score` for the options."""

    def add(compute: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"score {name!r} is registered twice; rename one of them")
        _REGISTRY[name] = Score(name, compute, higher_is_in_distribution, diagnostic, fit)
        return compute

    return add


def registered_scores() -> dict[str, Score]:
    """Every registered score by name, in the order they were registered (this package's by module name)."""
    return dict(_REGISTRY)


def computable_scores(fitted_scores: Mapping[str, Any]) -> dict[str, Score]:
    """The registered scores that can be computed: all but the fitted ones that have not been fitted."""
    return {name: score for name, score in _REGISTRY.items() if score.fit is None or name in fitted_scores}


def decision_scores() -> list[str]:
    """The scores a drift decision tests: all registered scores but the diagnostic factors."""
    return [name for name, score in registered_scores().items() if not score.diagnostic]


# Last, because each score module imports `register` from this package.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
