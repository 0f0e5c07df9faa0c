"""Calibration: thresholds at exact quantiles, segments, the false-alarm check, the guardrail, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.calibration import Calibration, CalibrationConfig, calibrate, calibration_summary, score_reference

SCORES = ("gradnorm", "energy", "msp", "maxlogit")
FAST = CalibrationConfig(check_windows=100, check_window_sizes=(50,))


def _healthy(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    base = rng.normal(10, 1, count)
    return {name: base + rng.normal(0, 0.3, count) for name in SCORES}  # correlated, as real scores are


def test_threshold_at_the_exact_quantile() -> None:
    reference = score_reference("gradnorm", np.arange(100, 0, -1, dtype=float), tpr=0.95)
    assert reference.threshold == 6.0  # 95 of the 100 values (6..100) are at or above it
    assert reference.expected_ood_rate == 0.05
    assert score_reference("msp", np.arange(1, 1001, dtype=float), tpr=0.9).threshold == 101.0


def test_calibration_keeps_decision_scores_and_checks_false_alarms() -> None:
    rng = np.random.default_rng(0)
    reference = {**_healthy(rng, 1000), "feature_l1": rng.normal(size=1000)}
    calibration = calibrate(reference, model_id="m@abc", config=FAST)
    assert sorted(calibration.scores) == sorted(SCORES)  # diagnostic factors are not tested
    assert calibration.reference_images == 1000
    assert calibration.references[""]["msp"].sample.size == 700  # 30% held out
    (check,) = calibration.false_alarm_checks
    assert (check.window_size, check.windows) == (50, 100)
    assert check.ci_low <= check.rate <= check.ci_high
    assert check.rate <= 0.05


def test_segments_with_enough_images_get_their_own_reference() -> None:
    rng = np.random.default_rng(1)
    reference = _healthy(rng, 1000)
    segments = ["cam-a"] * 600 + ["cam-b"] * 100 + [""] * 300
    calibration = calibrate(reference, model_id="m@abc", segments=segments, config=FAST)
    assert set(calibration.references) == {"", "cam-a"}
    assert calibration.threshold("msp", "cam-b") == calibration.threshold("msp")


def test_too_few_reference_images_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too few"):
        calibrate(_healthy(np.random.default_rng(2), 60), model_id="m@abc")
    with pytest.raises(ValueError, match="none of the decision scores"):
        calibrate({"feature_l1": np.ones(500)}, model_id="m@abc")


def test_guardrail_recommends_the_best_score_and_warns_on_a_weak_one() -> None:
    rng = np.random.default_rng(3)
    reference = _healthy(rng, 1000)
    shifted = {name: rng.normal(7, 1, 300) for name in SCORES}
    shifted["gradnorm"] = rng.normal(10, 1, 300)  # GradNorm blind to this shift, as on some models
    calibration = calibrate(reference, model_id="m@abc", validation={"textures": shifted}, config=FAST)
    by_score = {entry.score: entry for entry in calibration.separation}
    assert by_score["gradnorm"].auroc == pytest.approx(0.5, abs=0.06)
    assert by_score["msp"].auroc > 0.95
    assert by_score["msp"].fpr95 < 0.2
    assert calibration.recommended_score != "gradnorm"
    assert any("gradnorm is weak on textures" in warning for warning in calibration.warnings)


def test_json_round_trip_gives_the_same_decisions() -> None:
    rng = np.random.default_rng(4)
    calibration = calibrate(_healthy(rng, 600), model_id="m@abc", config=FAST)
    loaded = Calibration.from_json(calibration.to_json())
    assert loaded.model_id == "m@abc"
    assert loaded.config == calibration.config
    window = {"": {name: values[:80] - 0.8 for name, values in _healthy(rng, 80).items()}}
    assert loaded.decide(window) == calibration.decide(window)
    assert calibration_summary(loaded)["threshold_msp"] == calibration.threshold("msp")


def test_json_keeps_precision_and_decoder_and_reads_older_documents_as_fp32_on_the_host() -> None:
    calibration = calibrate(
        _healthy(np.random.default_rng(5), 300), model_id="m@abc", config=FAST, precision="fp16", decoder="device"
    )
    read = Calibration.from_json(calibration.to_json())
    assert (read.precision, read.decoder) == ("fp16", "device")
    document = json.loads(calibration.to_json())
    del document["precision"], document["decoder"]  # as written before either was recorded
    read = Calibration.from_json(json.dumps(document))
    assert (read.precision, read.decoder) == ("fp32", "host")


def test_foreign_json_is_refused() -> None:
    with pytest.raises(ValueError, match="recalibrate"):
        Calibration.from_json('{"format": "something-else/9"}')
