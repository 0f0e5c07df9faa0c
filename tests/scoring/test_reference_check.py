"""The reference check: the decision rule's page rate on production, and how far production sits, value by value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring import reference_check
from scoring.calibration import CalibrationConfig, calibrate
from scoring.drift import decide_window
from scoring.reference_check import check_reference

SCORES = ("gradnorm", "energy", "msp", "maxlogit")
CONFIG = CalibrationConfig(check_windows=60, check_window_sizes=(50, 100))


def _images(count: int, seed: int, *, brightness: float = 0.5, spread: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(10, 1, count)
    values = {name: base + rng.normal(0, 0.3, count) for name in SCORES}
    values["brightness"] = rng.normal(brightness, spread, count)
    values["contrast"] = rng.normal(0.2, 0.03, count)
    return values


@pytest.fixture(scope="module")
def calibration():
    return calibrate(_images(600, 0), model_id="m@1", config=CONFIG)


def test_a_sample_of_production_is_representative(calibration) -> None:
    record = check_reference(calibration, _images(400, 1))
    assert record.representative
    assert record.fix is None
    assert [rate.window_size for rate in record.page_rates] == [50, 100]
    assert all(rate.ci_low <= 2 * CONFIG.alpha for rate in record.page_rates)
    assert record.images == 400
    assert record.unchecked == ()
    assert {shift.name for shift in record.values} == {*SCORES, "brightness", "contrast"}
    assert all(shift.ks_distance < 0.15 for shift in record.values)


def test_curated_photos_do_not_represent_uncurated_production(calibration) -> None:
    # Production of the same content, darker and more varied than the curated reference.
    record = check_reference(calibration, _images(400, 2, brightness=0.45, spread=0.08), fix_command="CMD")
    assert not record.representative
    worst = max(record.page_rates, key=lambda rate: rate.ci_low)
    assert worst.ci_low > 2 * CONFIG.alpha
    assert record.most_off[0] == "brightness"
    assert len(record.most_off) == 5
    brightness = next(shift for shift in record.values if shift.name == "brightness")
    assert brightness.median_shift < -0.5
    assert brightness.outside > 2 * brightness.expected_outside
    assert brightness.ks_p < 1e-6
    assert record.fix == "calibrate from production: CMD"
    assert "NOT representative" in record.summary()
    assert "brightness (KS" in record.summary()
    document = json.loads(json.dumps(record.to_dict()))
    assert document["representative"] is False
    assert document["page_rates"][0]["rate"] == record.page_rates[0].rate


def test_values_production_lacks_are_left_out_and_named(calibration) -> None:
    production = _images(200, 3)
    del production["energy"]
    record = check_reference(calibration, production)
    assert record.unchecked == ("energy",)
    assert "energy" not in {shift.name for shift in record.values}


def test_segments_are_decided_against_their_own_references() -> None:
    reference = _images(900, 4)
    # Segment "night" is darker in the reference too: it gets a reference of its own (>= 200 images).
    segments = ["day"] * 450 + ["night"] * 450
    reference["brightness"][450:] -= 0.2
    calibration = calibrate(reference, model_id="m@1", segments=segments, config=CONFIG)
    # Production is mostly night: against the feed's pooled reference it is darker, against each segment's not.
    production = _images(400, 5)
    production["brightness"][40:] -= 0.2
    split = ["day"] * 40 + ["night"] * 360
    assert check_reference(calibration, production, segments=split).representative
    assert not check_reference(calibration, production).representative


def test_too_few_production_images_is_a_clear_error(calibration) -> None:
    with pytest.raises(ValueError, match="40 production images are fewer than the smallest check window"):
        check_reference(calibration, _images(40, 6))
    with pytest.raises(ValueError, match="none of the calibration's scalar values"):
        check_reference(calibration, {"unknown": np.zeros(100)})


# Production from representative to plainly not: no pages, a few (0.49), and some at one size only (0.485).
@pytest.mark.parametrize(("brightness", "spread"), [(0.5, 0.05), (0.49, 0.06), (0.485, 0.05), (0.45, 0.08)])
def test_its_page_counts_are_those_of_the_whole_decisions(calibration, monkeypatch, brightness, spread) -> None:
    production = _images(400, 2, brightness=brightness, spread=spread)
    quick = check_reference(calibration, production)
    monkeypatch.setattr(
        reference_check, "window_is_drift", lambda *args, **kwargs: decide_window(*args, **kwargs).is_drift
    )
    assert check_reference(calibration, production) == quick
