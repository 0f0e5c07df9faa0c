"""Per-image scores computed from one forward pass, registered by name.

A new score is one new file in this package that calls :func:`register`; every module here is
imported with the package, so nothing else needs to change.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class HeadOutputs:
    """What a batch's forward pass leaves at the classifier head, in float64.

    Attributes:
        features: (N, D) penultimate features h, the head's input.
        logits: (N, C) head outputs z = W·h + b.
        temperature: T of the scores that define one (GradNorm, Energy).
    """

    features: torch.Tensor
    logits: torch.Tensor
    temperature: float

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
        compute: maps a batch's head outputs to an (N,) tensor.
        higher_is_in_distribution: the direction drift tests and thresholds read it in.
        diagnostic: True for factors shown to people but never used in a drift decision.
    """

    name: str
    compute: Callable[[HeadOutputs], torch.Tensor]
    higher_is_in_distribution: bool = True
    diagnostic: bool = False


_REGISTRY: dict[str, Score] = {}


def register(
    name: str, *, higher_is_in_distribution: bool = True, diagnostic: bool = False
) -> Callable[[Callable[[HeadOutputs], torch.Tensor]], Callable[[HeadOutputs], torch.Tensor]]:
    """Decorator registering ``compute`` as the score ``name``."""

    def add(compute: Callable[[HeadOutputs], torch.Tensor]) -> Callable[[HeadOutputs], torch.Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"score {name!r} is registered twice; rename one of them")
        _REGISTRY[name] = Score(name, compute, higher_is_in_distribution, diagnostic)
        return compute

    return add


def registered_scores() -> dict[str, Score]:
    """Every registered score by name, in the order of their modules' names."""
    return dict(_REGISTRY)


def decision_scores() -> list[str]:
    """The scores a drift decision tests: all registered scores but the diagnostic factors."""
    return [name for name, score in registered_scores().items() if not score.diagnostic]


# Last, because each score module imports `register` from this package.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
