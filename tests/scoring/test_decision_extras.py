"""What a calibration adds to a window's decision beyond its tests: estimated accuracy, the CUSUM, severity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.calibration import Calibration, CalibrationConfig, calibrate
from scoring.sequential import ChartState, ChartStep

CONFIG = CalibrationConfig(check_windows=100, check_window_sizes=(50, 100), sequential_run_length=200)


def reference(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    return {
        "msp": rng.beta(8, 2, count),
        "energy": rng.normal(10, 2, count),
        "brightness": rng.uniform(0.3, 0.7, count),
        "pred": rng.integers(0, 10, count),
    }


@pytest.fixture(scope="module")
def calibrated() -> tuple[Calibration, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    values = reference(rng, 800)
    correct = (rng.random(800) < values["msp"]).astype(float)
    return calibrate(values, model_id="m", config=CONFIG, correct=correct), values


def test_calibration_fits_accuracy_and_the_cusum_and_reads_them_back(calibrated) -> None:
    calibration, _ = calibrated
    assert calibration.accuracy.has_labels
    assert calibration.sequential.run_length >= 200
    assert "a false signal every" in calibration.sequential.describe()
    assert [check.window_size for check in calibration.accuracy_checks] == [50, 100]
    assert all(check.mean_absolute_error < 0.1 for check in calibration.accuracy_checks)
    again = Calibration.from_json(calibration.to_json())
    assert again.accuracy == calibration.accuracy
    assert again.sequential == calibration.sequential
    assert again.severity == calibration.severity


def test_a_decision_estimates_accuracy_per_tested_segment(calibrated) -> None:
    calibration, _values = calibrated
    rng = np.random.default_rng(1)
    healthy = {name: column[:120] for name, column in reference(rng, 120).items()}
    few = {name: column[:10] for name, column in healthy.items()}
    decision = calibration.decide({"cam-1": healthy, "cam-2": few})
    assert set(decision.accuracy) == {"cam-1"}  # cam-2 is below the minimum window and not tested
    assert (
        decision.accuracy["cam-1"].atc.low
        < calibration.accuracy.reference_accuracy
        < decision.accuracy["cam-1"].atc.high
    )
    stored = json.loads(json.dumps(decision.to_dict()))
    assert stored["accuracy"]["cam-1"]["atc"]["estimate"] == decision.accuracy["cam-1"].atc.estimate


def test_a_drift_that_costs_accuracy_pages(calibrated) -> None:
    calibration, _ = calibrated
    rng = np.random.default_rng(2)
    unsure = reference(rng, 150)
    unsure["msp"] = unsure["msp"] * 0.6  # far less confident
    decision = calibration.decide({"": unsure})
    assert decision.is_drift
    assert decision.severity[""].level == "page"


def test_a_cusum_signal_drifts_a_window_no_test_of_which_fired(calibrated) -> None:
    calibration, _ = calibrated
    rng = np.random.default_rng(3)
    decision = calibration.decide({"": reference(rng, 100)})
    assert decision.status == "ok"
    step = ChartStep(ChartState({"brightness/ks": 0.0}), calibration.sequential.limit + 1, "brightness/ks", True)
    drifted = calibration.with_sequential(decision, {"": step})
    assert drifted.status == "drift"
    assert [(f.test, f.score) for f in drifted.fired] == [("cusum", "brightness")]
    # Healthy images in every other respect: nothing to wake anyone for.
    assert drifted.sequential[""].signalled
    assert drifted.severity[""].level == "warn", drifted.severity
    assert "slow drift" in drifted.what_moved("")[0]
    quiet = ChartStep(ChartState({"brightness/ks": 1.0}, windows=3), 1.0, "brightness/ks", False)
    assert calibration.with_sequential(decision, {"": quiet}).status == "ok"


def test_a_document_from_before_these_decides_as_it_did(calibrated) -> None:
    calibration, values = calibrated
    document = json.loads(calibration.to_json())
    for key in ("accuracy", "accuracy_checks", "sequential", "severity"):
        del document[key]
    old = Calibration.from_json(json.dumps(document))
    assert old.accuracy is None
    assert old.sequential is None
    window = {"": {name: column[:100] for name, column in values.items()}}
    decision = old.decide(window)
    assert decision.accuracy == {}
    assert old.with_sequential(decision, {}) == decision
    assert [record.p_value for record in decision.tests] == [
        record.p_value for record in calibration.decide(window).tests
    ]


def test_a_segment_with_a_reference_of_its_own_is_costed_against_its_own_confidence() -> None:
    rng = np.random.default_rng(5)
    day, night = reference(rng, 400), reference(rng, 400)
    night["msp"] = night["msp"] * 0.8  # a night camera: healthy, less confident
    values = {name: np.concatenate([day[name], night[name]]) for name in day}
    segments = ["day"] * 400 + ["night"] * 400
    calibration = calibrate(values, model_id="m", config=CONFIG, segments=segments)
    assert set(calibration.segment_accuracy) == {"day", "night"}
    again = Calibration.from_json(calibration.to_json())
    # Compared as stored: without labels the replicates hold NaN, which equals nothing.
    stored = {segment: json.dumps(model.to_dict()) for segment, model in again.segment_accuracy.items()}
    assert stored == {segment: json.dumps(model.to_dict()) for segment, model in calibration.segment_accuracy.items()}
    healthy_night = {name: column[:150] for name, column in reference(rng, 150).items()}
    healthy_night["msp"] = healthy_night["msp"] * 0.8
    drop = again.decide({"night": healthy_night}).accuracy["night"].drop
    assert drop.low < 0 < drop.high  # no standing loss against the feed's more confident reference
