"""Per-image out-of-distribution scores for image classifiers: torch, numpy and scipy only.

Names are imported on first use, so that reading an error type or a setting (``gradwatch --help`` does) does not
pay for importing torch, about 2.5 s.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoring.errors import (
        DecoderUnavailableError,
        GradwatchError,
        ImageDecodeError,
        ModelSpecError,
        UnusableReferenceError,
    )
    from scoring.images import Preprocessing, decode_image
    from scoring.models import LoadedModel, load_model
    from scoring.scorer import Scorer, load_scorer, resolve_device
    from scoring.scores import HeadOutputs, Score, decision_scores, register, registered_scores
    from scoring.settings import DECODERS, DEFAULT_MODEL, PRECISIONS, ScoringSettings

_HOMES = {
    "scoring.errors": (
        "DecoderUnavailableError",
        "GradwatchError",
        "ImageDecodeError",
        "ModelSpecError",
        "UnusableReferenceError",
    ),
    "scoring.images": ("Preprocessing", "decode_image"),
    "scoring.models": ("LoadedModel", "load_model"),
    "scoring.scorer": ("Scorer", "load_scorer", "resolve_device"),
    "scoring.scores": ("HeadOutputs", "Score", "decision_scores", "register", "registered_scores"),
    "scoring.settings": ("DECODERS", "DEFAULT_MODEL", "PRECISIONS", "ScoringSettings"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DECODERS",
    "DEFAULT_MODEL",
    "PRECISIONS",
    "DecoderUnavailableError",
    "GradwatchError",
    "HeadOutputs",
    "ImageDecodeError",
    "LoadedModel",
    "ModelSpecError",
    "Preprocessing",
    "Score",
    "Scorer",
    "ScoringSettings",
    "UnusableReferenceError",
    "decision_scores",
    "decode_image",
    "load_model",
    "load_scorer",
    "register",
    "registered_scores",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module 'scoring' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name]), name)
    globals()[name] = value
    return value
