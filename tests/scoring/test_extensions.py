"""The extension points: a window test and a score fitted on the reference, each one test-only file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from scoring import load_scorer, registered_scores
from scoring.calibration import Calibration, CalibrationConfig, calibrate
from scoring.features import FEATURES

SCORES = ("gradnorm", "energy", "msp", "maxlogit")
TINY = "tests.scoring.tiny_models:build"
FAST = CalibrationConfig(check_windows=100, check_window_sizes=(50,))


def _png(seed: int, flat: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (
        np.full((48, 64, 3), rng.integers(0, 60), np.uint8) if flat else rng.integers(0, 256, (48, 64, 3), np.uint8)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.usefixtures("toy_extensions")
def test_a_registered_window_test_is_fitted_kept_and_decides_beside_the_others() -> None:
    rng = np.random.default_rng(0)
    reference = {name: rng.normal(10, 1, 600) for name in SCORES}
    calibration = calibrate(reference, model_id="m@abc", config=FAST)
    assert sorted(calibration.tests) == ["beta_binomial", "decile_chi_square", "ks"]
    assert len(calibration.references[""]["msp"].tests["decile_chi_square"]["edges"]) == 9
    loaded = Calibration.from_json(calibration.to_json())
    wider = {"": {name: rng.normal(10, 2.5, 200) for name in SCORES}}  # same median, spread out: deciles see it
    decision = loaded.decide(wider)
    assert decision == calibration.decide(wider)
    assert {"decile_chi_square", "ks"} <= {fired.test for fired in decision.fired}
    assert len(decision.tests) == 3 * len(SCORES)


@pytest.mark.usefixtures("toy_extensions")
def test_a_fitted_score_learns_on_the_reference_and_is_computed_only_with_what_it_learned() -> None:
    unfitted = load_scorer(TINY, device="cpu")
    assert "feature_distance" not in unfitted.score_names
    healthy = [_png(seed) for seed in range(40)]
    fitted = unfitted.fit_scores(healthy, sources=[f"h{i}" for i in range(40)])
    learning = {name for name, score in registered_scores().items() if score.fit is not None}
    assert "feature_distance" in learning
    assert set(fitted) == learning | {FEATURES}  # every score that learns, and the feature projection
    assert len(fitted["feature_distance"]["mean"]) == unfitted.head.in_features
    scorer = load_scorer(TINY, device="cpu", fitted_scores=fitted)
    assert "feature_distance" in scorer.score_names
    new_healthy = scorer.score_encoded([_png(seed) for seed in range(100, 140)], sources=["x"] * 40)
    lens_cap = scorer.score_encoded([_png(seed, flat=True) for seed in range(40)], sources=["x"] * 40)
    distance = np.median([scores["feature_distance"] for scores in new_healthy])
    assert np.median([scores["feature_distance"] for scores in lens_cap]) > 2 * distance
    expected = torch.tensor(fitted["feature_distance"]["mean"])
    assert torch.isfinite(expected).all()


@pytest.mark.usefixtures("toy_extensions")
def test_a_fitted_score_low_in_distribution_is_calibrated_from_above() -> None:
    rng = np.random.default_rng(1)
    reference = {**{name: rng.normal(10, 1, 600) for name in SCORES}, "feature_distance": rng.gamma(4, 0.25, 600)}
    calibration = calibrate(reference, model_id="m@abc", config=FAST, fitted_scores={"feature_distance": {}})
    distance = calibration.references[""]["feature_distance"]
    assert distance.side == "high"
    assert distance.threshold > np.median(distance.sample)  # the cut is on the upper tail
    assert calibration.fitted_scores == {"feature_distance": {}}
    window = {"": {**{name: rng.normal(10, 1, 100) for name in SCORES}, "feature_distance": rng.gamma(4, 0.5, 100)}}
    decision = calibration.decide(window)
    assert {fired.score for fired in decision.fired} == {"feature_distance"}
    effect = next(effect for effect in decision.effects if effect.score == "feature_distance")
    assert effect.median_shift < 0
    assert effect.ood_rate > 0.3


def test_the_examples_are_registered_only_where_a_test_asks_for_them() -> None:
    from scoring import registered_scores
    from scoring.window_tests import registered_window_tests

    assert "feature_distance" not in registered_scores()
    assert "decile_chi_square" not in registered_window_tests()
