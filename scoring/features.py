"""The penultimate features, projected to a few dimensions fitted on the reference, for feature-space drift tests.

A two-sample test in 1280 dimensions from windows of a hundred images has little power and is costly to store;
the first principal components of the reference's features keep the directions healthy images vary along, in
which a shift shows, and make the per-image vector small enough to keep in the scores table, so a window can be
tested again without scoring it again. The features are L2-normalised first: their norm is what GradNorm already
measures, and the direction is what the feature tests add (measured below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# The value's name in the scores table, in calibration documents and among fitted states.
FEATURES = "features"
# Principal components kept, at most (fewer when fewer images are fitted). The MMD test on EfficientNet-Lite0's
# features, 150 ImageNet samples fitted, windows of 100 with 25% replaced, p <= 0.0025 (36 windows each, no false
# alarm in any configuration): DTD caught in 21% at 16 components, 50% at 32, 81% at 64, 92% at 128, 100% on all
# 1280 normalised features; Gaussian noise 0, 0, 21, 22, 50%; a random projection to 256 dimensions 86% and 19%,
# PCA of unnormalised features at 32 15% and 6%. 128 keeps most of the power at a tenth of the bytes per image.
PROJECTED_DIMENSIONS = 128


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=1, keepdim=True).clamp(min=torch.finfo(features.dtype).tiny)


def fit_projection(features: torch.Tensor, dimensions: int = PROJECTED_DIMENSIONS) -> dict[str, Any]:
    """The mean and leading principal axes of the reference's normalised features, as a JSON-serialisable state:
    ``dimensions`` of them, or as many as the images (less one) and the features allow.

    Raises:
        ValueError: fewer than two images to fit on.
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(
            f"a feature projection needs at least 2 images to fit on, got {len(features)}; calibrate on more "
            "healthy images"
        )
    dimensions = min(dimensions, len(features) - 1, features.shape[1])
    normalised = _normalised(features.double())
    mean = normalised.mean(dim=0)
    _, _, axes = torch.linalg.svd(normalised - mean, full_matrices=False)
    return {"mean": mean.tolist(), "axes": axes[:dimensions].tolist()}


@dataclass(frozen=True)
class FeatureProjection:
    """A fitted projection, on the device it projects on."""

    mean: torch.Tensor  # (D,)
    axes: torch.Tensor  # (dimensions, D)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> FeatureProjection:
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float64, device=device)  # noqa: E731
        return cls(as_tensor(state["mean"]), as_tensor(state["axes"]))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, dimensions) coordinates on the fitted axes, in float64."""
        return (_normalised(features.double()) - self.mean) @ self.axes.T
