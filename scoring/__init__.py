"""Per-image out-of-distribution scores for image classifiers: torch, numpy and scipy only."""

from scoring.decoding import DECODERS
from scoring.errors import DecoderUnavailableError, GradwatchError, ImageDecodeError, ModelSpecError
from scoring.images import Preprocessing, decode_image
from scoring.models import LoadedModel, load_model
from scoring.scorer import PRECISIONS, Scorer, load_scorer, resolve_device
from scoring.scores import HeadOutputs, Score, decision_scores, register, registered_scores

__all__ = [
    "DECODERS",
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
    "decision_scores",
    "decode_image",
    "load_model",
    "load_scorer",
    "register",
    "registered_scores",
    "resolve_device",
]
