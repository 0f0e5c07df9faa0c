"""Small models for tests, importable as ``tests.scoring.tiny_models:NAME`` model specs."""

from __future__ import annotations

import torch
from torch import nn


class TinyClassifier(nn.Module):
    """conv -> pool -> linear -> relu -> linear head, 5 classes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Linear(6, 8)
        self.classifier = nn.Linear(8, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.hidden(self.body(images))))


class ReturnsFeatures(nn.Module):
    """TorchScript-friendly wrapper: forward returns (logits, features)."""

    def __init__(self, model: TinyClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.model.hidden(self.model.body(images)))
        return self.model.classifier(features), features


class TwoViews(TinyClassifier):
    """Averages the head over two views, so the head runs twice per forward pass."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (super().forward(images) + super().forward(images.flip(3))) / 2


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).mean(dim=(2, 3))


def build() -> TinyClassifier:
    return TinyClassifier()


def build_near_uniform() -> TinyClassifier:
    """Head weights of order 1e-7: the softmax differs from uniform in the 7th digit."""
    model = TinyClassifier()
    with torch.no_grad():
        model.classifier.weight.mul_(1e-6)
        model.classifier.bias.zero_()
    return model


def build_two_views() -> TwoViews:
    return TwoViews()


def build_without_linear() -> NoLinear:
    return NoLinear()


def build_not_a_module() -> str:
    return "not a module"


def build_large_features() -> TinyClassifier:
    """Hidden activations of order 1e6, past float16's 65504: half precision overflows to inf."""
    model = TinyClassifier()
    with torch.no_grad():
        model.hidden.weight.mul_(1e6)
        model.classifier.weight.mul_(1e-6)
    return model
