from __future__ import annotations

import importlib
import sys

import pytest

import scoring.scores
import scoring.window_tests
from scoring import Scorer, load_scorer


@pytest.fixture(scope="session")
def efficientnet() -> Scorer:
    """The real default model with its shipped ImageNet weights."""
    return load_scorer("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="session")
def tiny() -> Scorer:
    return load_scorer("tests.scoring.tiny_models:build", device="cpu")


# Test-only extensions, one file each, as a user would add them to scoring/window_tests/ and scoring/scores/.
EXAMPLES = ("tests.scoring.decile_chi_square", "tests.scoring.feature_distance")


@pytest.fixture
def toy_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only window test and fitted score registered for one test, as if they shipped in the packages."""
    monkeypatch.setattr(scoring.scores, "_REGISTRY", dict(scoring.scores._REGISTRY))
    monkeypatch.setattr(scoring.window_tests, "_REGISTRY", dict(scoring.window_tests._REGISTRY))
    for module in EXAMPLES:
        monkeypatch.delitem(sys.modules, module, raising=False)
        importlib.import_module(module)
