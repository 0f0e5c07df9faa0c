"""Per-image out-of-distribution scores for image classifiers: torch, numpy and scipy only."""

from scoring.decoding import DECODERS
from scoring.errors import (
    DecoderUnavailableError,
    GradwatchError,
    ImageDecodeError,
    ModelSpecError,
    UnusableReferenceError,
)
from scoring.images import Preprocessing, decode_image
from scoring.models import DEFAULT_MODEL, LoadedModel, load_model
from scoring.scorer import Scorer, load_scorer, resolve_device
from scoring.scores import HeadOutputs, Score, decision_scores, register, registered_scores
from scoring.settings import PRECISIONS, ScoringSettings

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
