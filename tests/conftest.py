from __future__ import annotations

import pytest

from scoring import Scorer, load_scorer


@pytest.fixture(scope="session")
def efficientnet() -> Scorer:
    """The real default model with its shipped ImageNet weights."""
    return load_scorer("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="session")
def tiny() -> Scorer:
    return load_scorer("tests.scoring.tiny_models:build", device="cpu")
