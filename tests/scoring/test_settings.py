"""Scoring settings: validated once, and the one check that thresholds hold for how windows are scored."""

from __future__ import annotations

import pytest

from scoring import ScoringSettings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"decoder": "gpu"}, "decoder must be one of"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"temperature": 0.0}, "temperature must be a positive number"),
        ({"temperature": float("nan")}, "temperature must be a positive number"),
    ],
)
def test_settings_refuse_what_cannot_score(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringSettings(**changes)


def test_batch_size_by_device_unless_given() -> None:
    assert ScoringSettings().batch_size_on("cpu") == 32
    assert ScoringSettings().batch_size_on("cuda") == 256
    assert ScoringSettings(batch_size=8).batch_size_on("cuda") == 8


def test_thresholds_hold_only_for_the_settings_that_move_scores() -> None:
    calibrated = ScoringSettings(precision="fp16", temperature=2.0).recorded()
    calibrated_settings = {"precision": "fp16", "decoder": "host", "temperature": 2.0, "scaled_jpeg_decode": False}
    assert calibrated == {**calibrated_settings, "backend": "auto"}
    # Device, batch size and compile leave the scores where they are.
    assert (
        ScoringSettings(precision="fp16", temperature=2.0, device="cuda:1", batch_size=512).mismatch(calibrated) is None
    )
    message = ScoringSettings(temperature=2.0).mismatch(calibrated)
    assert "calibrated with --precision fp16, but monitoring uses --precision fp32" in message
    assert "monitor with --precision fp16" in message
    # What calibrations recorded before a setting existed reads as its one value then.
    assert ScoringSettings().mismatch({"precision": "fp32"}) is None
    assert "--temperature 1.0" in ScoringSettings(temperature=3.0).mismatch({})
