"""Calibration: thresholds at exact quantiles, segments, the false-alarm check, the guardrail, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.calibration import Calibration, CalibrationConfig, calibrate, calibration_summary
from scoring.references import score_reference

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
    calibration = calibrate(
        reference, model_id="m@abc", validation={"textures": shifted}, primary_score="gradnorm", config=FAST
    )
    by_score = {entry.score: entry for entry in calibration.separation}
    assert by_score["gradnorm"].auroc == pytest.approx(0.5, abs=0.06)
    assert by_score["msp"].auroc > 0.95
    assert by_score["msp"].fpr95 < 0.2
    assert calibration.recommended_score != "gradnorm"
    assert any("gradnorm is weak on textures" in warning for warning in calibration.warnings)


def test_without_a_chosen_score_the_recommended_one_leads_and_nothing_warns_against_it() -> None:
    # calibrate's default lead (GradNorm) drew a warning against itself on the default model's validation sets.
    rng = np.random.default_rng(3)
    shifted = {name: rng.normal(7, 1, 300) for name in SCORES}
    shifted["gradnorm"] = rng.normal(10, 1, 300)
    calibration = calibrate(_healthy(rng, 1000), model_id="m@abc", validation={"textures": shifted}, config=FAST)
    assert calibration.lead_score == calibration.recommended_score != "gradnorm"
    assert not any("gradnorm" in warning for warning in calibration.warnings)
    assert Calibration.from_json(calibration.to_json()).lead_score == calibration.lead_score
    unvalidated = calibrate(_healthy(rng, 600), model_id="m@abc", config=FAST)
    assert unvalidated.lead_score == "gradnorm"


def test_json_round_trip_gives_the_same_decisions() -> None:
    rng = np.random.default_rng(4)
    calibration = calibrate(_healthy(rng, 600), model_id="m@abc", config=FAST)
    loaded = Calibration.from_json(calibration.to_json())
    assert loaded.model_id == "m@abc"
    assert loaded.config == calibration.config
    window = {"": {name: values[:80] - 0.8 for name, values in _healthy(rng, 80).items()}}
    assert loaded.decide(window) == calibration.decide(window)
    assert calibration_summary(loaded)["threshold_msp"] == calibration.threshold("msp")


def test_json_keeps_the_scoring_settings_and_reads_older_documents_as_scored_with_the_defaults() -> None:
    scored_with = {"precision": "fp16", "decoder": "device", "temperature": 2.0, "scaled_jpeg_decode": True}
    calibration = calibrate(_healthy(np.random.default_rng(5), 300), model_id="m@abc", config=FAST, scoring=scored_with)
    assert Calibration.from_json(calibration.to_json()).scoring == scored_with
    document = json.loads(calibration.to_json())
    del document["scoring"]  # as written before any setting was recorded
    assert Calibration.from_json(json.dumps(document)).scoring == {
        "precision": "fp32",
        "decoder": "host",
        "temperature": 1.0,
        "scaled_jpeg_decode": False,
    }


def _as_format_1(calibration: Calibration) -> str:
    """The document gradwatch 0.1 wrote before window tests were registered."""
    document = json.loads(calibration.to_json())
    document["format"] = "gradwatch.calibration/1"
    document.update(precision="fp16", decoder="host")
    for key in ("scoring", "fitted_scores"):
        del document[key]
    for key in ("fit_share", "max_fit_images"):
        del document["config"][key]
    for scores in document["references"].values():
        for entry in scores.values():
            entry["threshold"] = entry.pop("lower")
            del entry["tests"], entry["upper"]
    return json.dumps(document)


def test_an_approved_format_1_calibration_decides_as_it_did() -> None:
    rng = np.random.default_rng(7)
    calibration = calibrate(_healthy(rng, 600), model_id="m@abc", config=FAST)
    old = Calibration.from_json(_as_format_1(calibration))
    assert old.tests == calibration.tests == ["beta_binomial", "ks"]
    assert (old.scoring["precision"], old.scoring["decoder"], old.scoring["temperature"]) == ("fp16", "host", 1.0)
    for shift in (0.0, 0.8):
        window = {"": {name: values[:80] - shift for name, values in _healthy(rng, 80).items()}}
        assert old.decide(window) == calibration.decide(window)


def test_foreign_json_is_refused() -> None:
    with pytest.raises(ValueError, match="recalibrate"):
        Calibration.from_json('{"format": "something-else/9"}')


def test_a_calibration_without_tests_is_refused() -> None:
    with pytest.raises(ValueError, match="no window tests to fit"):
        calibrate(_healthy(np.random.default_rng(8), 300), model_id="m@abc", config=FAST, tests=[])


def test_image_properties_are_calibrated_on_both_sides_where_they_apply() -> None:
    rng = np.random.default_rng(9)
    reference = {
        **_healthy(rng, 600),
        "brightness": rng.normal(0.45, 0.1, 600),
        "jpeg_quality": np.where(np.arange(600) % 2 == 0, rng.normal(90, 2, 600), np.nan),  # half are PNGs
        "blockiness": np.full(600, np.nan),  # applies to none
    }
    calibration = calibrate(reference, model_id="m@abc", config=FAST)
    assert calibration.reference("brightness").side == calibration.reference("jpeg_quality").side == "both"
    assert "blockiness" not in calibration.scores
    assert calibration.reference("jpeg_quality").sample.size < 0.6 * calibration.reference("msp").sample.size
    summary = calibration_summary(calibration)
    assert summary["threshold_brightness_low"] < 0.45 < summary["threshold_brightness_high"]
    (check,) = calibration.false_alarm_checks
    assert check.rate <= 0.05  # more tests, one family-wise rate
    assert calibration.recommended_score is None  # no validation sets; properties are never recommended


def test_the_images_fitted_on_are_the_same_wherever_the_reference_lives() -> None:
    # Regression: hashing whole URIs picked other fit images for the same reference in another folder, so a
    # calibration (and a test's healthy window) changed with the temporary path it ran in.
    names = [f"cam-{index % 3}/{index:04d}.jpg" for index in range(200)]
    config = CalibrationConfig()
    here = config.fits_on(f"/tmp/pytest-1/reference/{name}" for name in names)
    there = config.fits_on(f"s3://bucket/healthy/{name}" for name in names)
    assert len(here) == 60
    assert {uri.removeprefix("/tmp/pytest-1/reference/") for uri in here} == {
        uri.removeprefix("s3://bucket/healthy/") for uri in there
    }
