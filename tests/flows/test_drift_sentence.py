"""An alert's summary is a sentence a person reads: one phrase per family that fired, then what it likely costs."""

from __future__ import annotations

import numpy as np
import pytest

from flows.monitor.paging import drift_sentence
from scoring.calibration import Calibration, CalibrationConfig, calibrate
from scoring.drift import EffectSize
from scoring.severity import SeverityPolicy


def values(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    return {
        "msp": rng.beta(8, 2, count),
        "energy": rng.normal(10, 2, count),
        "sharpness": rng.lognormal(3, 0.3, count),
        "pred": rng.integers(0, 10, count),
    }


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    rng = np.random.default_rng(0)
    reference = values(rng, 600)
    correct = (rng.random(600) < reference["msp"]).astype(float)
    config = CalibrationConfig(check_windows=50, check_window_sizes=(100,), sequential_run_length=100)
    return calibrate(reference, model_id="m", config=config, correct=correct)


def test_a_drift_reads_as_outlier_rates_property_moves_and_its_cost(calibration: Calibration) -> None:
    rng = np.random.default_rng(1)
    window = values(rng, 200)
    window["msp"][:80] *= 0.4  # 40% far less confident: msp and energy both fire, one phrase tells the scores
    window["energy"][:80] -= 6
    window["sharpness"] = window["sharpness"] * 0.4  # blurred: a property
    decision = calibration.decide({"": window})
    sentence = drift_sentence(decision, "", calibration)
    parts = sentence.split("; ")
    # Most significant first: one phrase for the scores, one for the properties, then what was left out and the cost.
    scores = [part for part in parts if part.endswith("'s threshold against 5% expected")]
    assert len(scores) == 1, sentence
    assert "of images below" in scores[0]
    assert next(part for part in parts if part.startswith("sharpness fell ")).endswith(" IQR"), sentence
    assert parts[-2] == "1 more value moved", sentence
    reference = calibration.accuracy.reference_accuracy
    assert parts[-1].startswith("estimated accuracy ")
    assert parts[-1].endswith(f"against {reference:.2f}")


def test_severity_counts_outliers_of_a_value_healthy_images_never_leave() -> None:
    shared = EffectSize("aspect_ratio", "", 0.0, 0.0, 0.0, ood_rate=0.08, expected_ood_rate=0.0)
    severity = SeverityPolicy().assess(fired=["aspect_ratio"], effects=[shared], accuracy=None)
    assert severity.level == "page"
    assert severity.reasons == ["8% of images outside aspect_ratio's healthy bounds, where healthy windows have none"]
