"""Accuracy without labels: ATC and DoC fitted on a labelled reference, their intervals, and what they cannot see."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.accuracy import MIN_LABELLED, AccuracyModel, atc_threshold, fit_accuracy


def calibrated_model_outputs(rng: np.random.Generator, count: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Confidences of a calibrated classifier (right with the probability it states) and whether it was right."""
    confidence = rng.beta(a, b, count)
    return confidence, (rng.random(count) < confidence).astype(np.float64)


def test_both_estimates_hold_on_healthy_windows_and_doc_follows_a_model_that_stays_calibrated() -> None:
    rng = np.random.default_rng(0)
    confidence, correct = calibrated_model_outputs(rng, 2000, 8, 2)
    model = fit_accuracy(confidence, correct)
    assert model.reference_accuracy == pytest.approx(correct.mean())
    window, right = calibrated_model_outputs(rng, 400, 8, 2)
    healthy = model.estimate(window)
    for estimate in (healthy.atc, healthy.doc):
        assert estimate.estimate == pytest.approx(right.mean(), abs=0.04)
        assert estimate.low <= right.mean() <= estimate.high
    # Less confident and, as a calibrated model is, less accurate: DoC reads the fall in confidence as points lost.
    window, right = calibrated_model_outputs(rng, 400, 4, 3)
    shifted = model.estimate(window)
    assert shifted.doc.estimate == pytest.approx(right.mean(), abs=0.05)
    assert shifted.drop.estimate == pytest.approx(confidence.mean() - window.mean())
    # ATC counts images above a threshold: a whole distribution pushed below it reads as worse than it is.
    assert shifted.atc.estimate < right.mean() - 0.1


def test_the_share_below_the_atc_threshold_is_the_error_rate() -> None:
    rng = np.random.default_rng(1)
    confidence, correct = calibrated_model_outputs(rng, 1000, 6, 2)
    threshold = atc_threshold(confidence, correct)
    assert np.mean(confidence < threshold) == pytest.approx(1 - correct.mean(), abs=1e-3)
    assert atc_threshold(confidence, np.ones_like(correct)) == -np.inf  # no error: every image is at or above it


def test_without_labels_only_the_fall_in_confidence_is_estimated() -> None:
    rng = np.random.default_rng(2)
    confidence, _ = calibrated_model_outputs(rng, 800, 8, 2)
    model = fit_accuracy(confidence)
    estimate = model.estimate(confidence[:200] * 0.7)
    assert model.reference_accuracy is None
    assert estimate.atc is None
    assert estimate.doc is None
    assert estimate.drop.low < estimate.drop.estimate < estimate.drop.high
    assert estimate.drop.estimate == pytest.approx(confidence.mean() - 0.7 * confidence[:200].mean())
    assert "accuracy down by about" in estimate.describe()
    assert "calibrate with --labels" in model.describe()


def test_unlabelled_images_are_left_out_of_the_accuracy_and_too_few_labels_are_refused() -> None:
    rng = np.random.default_rng(3)
    confidence, correct = calibrated_model_outputs(rng, 600, 8, 2)
    partly = correct.copy()
    partly[300:] = np.nan
    model = fit_accuracy(confidence, partly)
    assert model.labelled == 300
    assert model.reference_accuracy == pytest.approx(correct[:300].mean())
    too_few = np.full_like(correct, np.nan)
    too_few[: MIN_LABELLED - 1] = 1.0
    with pytest.raises(ValueError, match=f"only {MIN_LABELLED - 1} reference images have a label"):
        fit_accuracy(confidence, too_few)
    with pytest.raises(ValueError, match="one per image"):
        fit_accuracy(confidence, correct[:10])


def test_a_model_read_back_from_json_estimates_the_same_and_a_retry_gets_the_same_interval() -> None:
    rng = np.random.default_rng(4)
    confidence, correct = calibrated_model_outputs(rng, 500, 8, 2)
    model = fit_accuracy(confidence, correct)
    again = AccuracyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    window = confidence[:120] * 0.9
    assert again.estimate(window) == model.estimate(window) == model.estimate(window)
    with pytest.raises(ValueError, match="no finite confidences"):
        model.estimate(np.array([np.nan]))
