"""A test-only fitted score, to show that a score learning from the reference is one file: the mean standardised
distance of an image's penultimate features from the reference's, lower in distribution."""

from __future__ import annotations

from typing import Any

import torch

from scoring.scores import HeadOutputs, register

# A feature that is constant on the reference (a dead ReLU) would divide by zero.
_MIN_SPREAD = 1e-6


def fit_feature_distance(head: HeadOutputs) -> dict[str, Any]:
    return {"mean": head.features.mean(dim=0).tolist(), "std": head.features.std(dim=0).tolist()}


@register("feature_distance", higher_is_in_distribution=False, fit=fit_feature_distance)
def feature_distance(head: HeadOutputs, state: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(state["mean"], dtype=head.features.dtype, device=head.features.device)
    std = torch.tensor(state["std"], dtype=head.features.dtype, device=head.features.device).clamp(min=_MIN_SPREAD)
    return ((head.features - mean) / std).abs().mean(dim=1)
