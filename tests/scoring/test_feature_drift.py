"""The feature-space and prediction tests, their permutation p-values, and what a fired test says in words."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.calibration import PREDICTION, Calibration, CalibrationConfig, calibrate, fit_tests
from scoring.drift import decide_window, window_is_drift
from scoring.features import FEATURES
from scoring.permutation import MAX_PERMUTATIONS, PERMUTATION_BLOCK, permutation_p_value
from scoring.references import ScoreReference, score_reference, unbounded_reference
from scoring.window_tests.chi_square import chi_square_test, class_shares_moved
from scoring.window_tests.mmd import _mmd_statistics, median_bandwidth, mmd_test

FAST = CalibrationConfig(check_windows=40, check_window_sizes=(50, 100))


def _features(rng: np.random.Generator, count: int, shift: float = 0.0, dimensions: int = 8) -> np.ndarray:
    return rng.normal(0, 1, (count, dimensions)) + shift


def test_permutation_p_value_is_exact_where_it_can_be_counted() -> None:
    # Four values, the window the largest one: a quarter of the relabellings put it in the window.
    values = np.array([3.0, 0.0, 1.0, 2.0])
    p = permutation_p_value(3.0, lambda members: values[members][:, 0], 4, 1)
    # It stops after one block of relabellings: within three standard errors of a 250-draw estimate of 1/4.
    assert p == pytest.approx(0.25, abs=3 * np.sqrt(0.25 * 0.75 / PERMUTATION_BLOCK))


def test_a_healthy_window_stops_early_and_a_shifted_one_runs_every_permutation() -> None:
    seen = []

    def counting(members: np.ndarray) -> np.ndarray:
        assert members.shape[1] == 3
        seen.append(len(members))
        return np.zeros(len(members))

    assert permutation_p_value(0.0, counting, 10, 3) == pytest.approx(1.0)
    assert sum(seen) == PERMUTATION_BLOCK  # every relabelling reached the statistic: one block decided it
    seen.clear()
    assert permutation_p_value(1.0, counting, 10, 3) == pytest.approx(1 / (MAX_PERMUTATIONS + 1))
    assert sum(seen) == MAX_PERMUTATIONS


def test_mmd_holds_its_level_on_healthy_windows_and_sees_a_moved_mean() -> None:
    rng = np.random.default_rng(0)
    reference = _features(rng, 300)
    bandwidth = median_bandwidth(reference)
    healthy = [mmd_test(_features(rng, 60), reference, bandwidth).p_value for _ in range(100)]
    assert np.mean(np.asarray(healthy) <= 0.05) <= 0.12  # a valid test pages on about 5% of them
    shifted = mmd_test(_features(rng, 60, shift=0.7), reference, bandwidth)
    assert shifted.p_value < 0.001
    assert shifted.summary.startswith("features moved: MMD ")


def test_the_bandwidth_is_the_median_distance_and_survives_identical_vectors() -> None:
    points = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances 5, 5, 10
    assert median_bandwidth(points) == pytest.approx(5.0)
    assert median_bandwidth(np.zeros((5, 3))) == 1.0


def test_chi_square_sees_a_feed_collapsing_onto_one_class_and_names_it() -> None:
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 1000, 500)  # about one image per class, as a varied feed gives
    healthy = chi_square_test(rng.integers(0, 1000, 100), reference)
    assert healthy.p_value > 0.01
    collapsed = np.concatenate([rng.integers(0, 1000, 70), np.full(30, 417)])  # a dark feed: one class
    result = chi_square_test(collapsed, reference)
    assert result.p_value < 0.001
    assert class_shares_moved(collapsed, reference)[0][0] == 417
    assert "class 417 rose from 0." in result.summary
    assert "to 30.0%" in result.summary


def test_chi_square_holds_its_level_with_a_thousand_classes_and_small_windows() -> None:
    rng = np.random.default_rng(2)
    reference = rng.integers(0, 1000, 400)
    p_values = np.array([chi_square_test(rng.integers(0, 1000, 50), reference).p_value for _ in range(100)])
    assert np.mean(p_values <= 0.05) <= 0.12


def test_vector_and_categorical_references_round_trip_and_take_only_their_tests() -> None:
    rng = np.random.default_rng(3)
    features = fit_tests(unbounded_reference(FEATURES, _features(rng, 100), "vector"), ["ks", "beta_binomial", "mmd"])
    classes = fit_tests(unbounded_reference(PREDICTION, rng.integers(0, 9, 100), "categorical"), ["ks", "chi_square"])
    assert list(features.tests) == ["mmd"]
    assert list(classes.tests) == ["chi_square"]
    assert features.side == classes.side == "none"
    for reference in (features, classes):
        again = ScoreReference.from_dict(reference.score, reference.to_dict())
        assert again.kind == reference.kind
        assert np.array_equal(again.sample, reference.sample)
    assert again.sample.dtype == np.int64
    with pytest.raises(ValueError, match="non-empty"):
        unbounded_reference(FEATURES, np.ones(10), "vector")  # one number per image is not a vector


def test_a_calibration_with_features_and_predictions_decides_and_round_trips() -> None:
    rng = np.random.default_rng(4)
    reference = {
        "gradnorm": rng.normal(10, 1, 1000),
        FEATURES: _features(rng, 1000),
        PREDICTION: rng.integers(0, 50, 1000),
    }
    calibration = calibrate(reference, model_id="m@abc", config=FAST)
    assert calibration.scores == ["gradnorm", FEATURES, PREDICTION]
    assert calibration.scalar_scores == ["gradnorm"]
    assert calibration.reference(FEATURES).sample.shape == (FAST.max_permutation_sample, 8)
    assert sorted(calibration.tests) == ["beta_binomial", "chi_square", "ks", "mmd"]
    loaded = Calibration.from_json(calibration.to_json())
    window = {
        "gradnorm": rng.normal(10, 1, 100),
        FEATURES: _features(rng, 100, shift=1.0),
        PREDICTION: rng.integers(0, 50, 100),
    }
    decision = loaded.decide({"": window})
    assert decision == calibration.decide({"": window})
    fired = {(fired.score, fired.test) for fired in decision.fired}
    assert fired == {(FEATURES, "mmd")}  # only the features moved
    assert [effect.score for effect in decision.effects] == ["gradnorm"]  # effect sizes are for numbers only
    assert all(check.rate <= 0.1 for check in calibration.false_alarm_checks)


def test_every_test_record_says_what_moved_in_words() -> None:
    rng = np.random.default_rng(5)
    sharpness = fit_tests(
        score_reference("sharpness", rng.normal(100, 10, 2000), 0.95, side="both"), ["ks", "beta_binomial"]
    )
    gradnorm = fit_tests(score_reference("gradnorm", rng.normal(10, 1, 2000), 0.95), ["ks"])
    window = {"sharpness": rng.normal(70, 10, 100), "gradnorm": rng.normal(9, 1, 100)}
    decision = decide_window({"": window}, {"": {"sharpness": sharpness, "gradnorm": gradnorm}})
    summaries = {(record.score, record.test): record.summary for record in decision.tests}
    assert summaries[("sharpness", "ks")].startswith("sharpness fell 2.")
    assert "IQR below the reference median" in summaries[("sharpness", "ks")]
    assert "toward out of distribution" not in summaries[("sharpness", "ks")]  # a property has no good side
    assert summaries[("gradnorm", "ks")].endswith(f"p {decision.tests[-1].p_value:.2g})")
    assert ", toward out of distribution" in summaries[("gradnorm", "ks")]
    assert (
        "of images outside sharpness's healthy bounds, against 5% of healthy ones"
        in summaries[("sharpness", "beta_binomial")]
    )


def test_what_moved_lists_the_fired_tests_most_significant_first_per_segment() -> None:
    rng = np.random.default_rng(6)
    references = {
        "": {
            "gradnorm": fit_tests(score_reference("gradnorm", rng.normal(10, 1, 2000), 0.95), ["ks"]),
            "sharpness": fit_tests(score_reference("sharpness", rng.normal(100, 10, 2000), 0.95, side="both"), ["ks"]),
        }
    }
    window = {
        "cam-1": {"gradnorm": rng.normal(9.3, 1, 100), "sharpness": rng.normal(40, 10, 100)},
        "cam-2": {"gradnorm": rng.normal(10, 1, 100), "sharpness": rng.normal(100, 10, 100)},
    }
    decision = decide_window(window, references)
    moved = decision.what_moved("cam-1")
    assert [line.split(" ")[0] for line in moved] == ["sharpness", "gradnorm"]
    assert decision.what_moved("cam-2") == []
    assert decision.what_moved() == [f"cam-1: {line}" for line in moved]
    assert decision.to_dict()["what_moved"] == decision.what_moved()


def test_the_fast_mmd_equals_its_definition_on_every_relabelling(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    window, reference = _features(rng, 6, shift=0.5, dimensions=3), _features(rng, 9, dimensions=3)
    pooled = np.concatenate([window, reference])
    kernel = np.exp(-((pooled[:, None] - pooled[None]) ** 2).sum(-1) / (2 * 1.3**2))
    members = rng.permuted(np.broadcast_to(np.arange(15), (20, 15)), axis=1)[:, :6]
    expected = []
    for row in members:
        weights = np.full(15, -1 / 9)
        weights[row] = 1 / 6
        expected.append(weights @ kernel @ weights)
    seen = {}

    def keep(observed, statistics, pooled_size, window_size, **_):
        seen["statistics"] = statistics
        return 1.0

    monkeypatch.setattr("scoring.window_tests.mmd.permutation_p_value", keep)
    result = mmd_test(window, reference, 1.3)
    np.testing.assert_allclose(seen["statistics"](members), expected, rtol=1e-10)
    assert result.statistic == pytest.approx(np.sqrt(expected_window_mmd(kernel, 6, 9)))


def expected_window_mmd(kernel: np.ndarray, n: int, m: int) -> float:
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def test_the_fast_chi_square_equals_pearsons_on_every_relabelling(monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy import stats

    rng = np.random.default_rng(8)
    window, reference = rng.integers(0, 5, 30), rng.integers(0, 7, 50)
    pooled = np.concatenate([window, reference])
    seen = {}
    monkeypatch.setattr(
        "scoring.window_tests.chi_square.permutation_p_value",
        lambda observed, statistics, *_, **__: seen.setdefault("statistics", statistics) and 1.0,
    )
    result = chi_square_test(window, reference)
    members = rng.permuted(np.broadcast_to(np.arange(80), (10, 80)), axis=1)[:, :30]
    for row, statistic in zip(members, seen["statistics"](members), strict=True):
        in_window = np.isin(np.arange(80), row)
        table = np.array([[np.sum(pooled[in_window] == c), np.sum(pooled[~in_window] == c)] for c in range(7)])
        assert statistic == pytest.approx(stats.chi2_contingency(table.T, correction=False).statistic)
    table = np.array([[np.sum(window == c), np.sum(reference == c)] for c in range(7)])
    assert result.statistic == pytest.approx(stats.chi2_contingency(table.T, correction=False).statistic)


def test_whether_a_window_drifts_is_its_decisions_answer_for_every_kind_of_test() -> None:
    rng = np.random.default_rng(6)
    brightness = rng.normal(0.5, 0.05, 800)
    brightness[::7] = np.nan  # a property that does not apply to every image
    reference = {
        "gradnorm": rng.normal(10, 1, 800),
        "brightness": brightness,
        FEATURES: _features(rng, 800),
        PREDICTION: rng.integers(0, 20, 800),
    }
    calibration = calibrate(reference, model_id="m@abc", segments=["day", "night"] * 400, config=FAST)
    assert set(calibration.references) == {"", "day", "night"}
    answers = []
    for index in range(60):
        # Shifts near where each test starts firing, so that windows fall on both sides for each.
        moved = index % 4
        size = int(rng.choice([20, 50, 120]))
        segment = {
            "gradnorm": rng.normal(10 - (moved == 1) * rng.random(), 1, size),
            "brightness": rng.normal(0.5, 0.05, size),
            FEATURES: _features(rng, size, shift=0.5 * (moved == 2) * rng.random()),
            PREDICTION: np.where(rng.random(size) < 0.3 * (moved == 3) * rng.random(), 4, rng.integers(0, 20, size)),
        }
        window = {"day": segment, "door": {name: values[:5] for name, values in segment.items()}}
        decision = decide_window(window, calibration.references, alpha=0.01, min_window=10)
        drifts = window_is_drift(window, calibration.references, alpha=0.01, min_window=10)
        assert drifts == decision.is_drift, (index, decision.fired, [record.p_value for record in decision.tests])
        answers.append((drifts, {fired.test for fired in decision.fired}))
    assert sum(drifts for drifts, _ in answers) >= 10
    assert sum(not drifts for drifts, _ in answers) >= 10
    # Windows only the analytic tests page (no permutation test is run), and windows only the permutation tests
    # page (settled by running them to their end).
    assert any(fired and not fired & {"mmd", "chi_square"} for _, fired in answers)
    assert any(fired and fired <= {"mmd", "chi_square"} for _, fired in answers)
    assert not window_is_drift({"door": window["door"]}, calibration.references, alpha=0.01, min_window=10)


def _squared_mmd_by_definition(window: np.ndarray, reference: np.ndarray, bandwidth: float) -> float:
    def mean_kernel(left: np.ndarray, right: np.ndarray) -> float:
        distances = ((left[:, None, :] - right[None, :, :]) ** 2).sum(axis=2)
        return float(np.exp(-distances / (2 * bandwidth**2)).mean())

    return mean_kernel(window, window) + mean_kernel(reference, reference) - 2 * mean_kernel(window, reference)


def test_the_kernel_statistic_of_every_relabelling_is_the_squared_mmd_with_the_reference_part_kept() -> None:
    rng = np.random.default_rng(7)
    relabellings = np.stack([rng.permutation(150)[:30] for _ in range(6)])
    # Two windows against each of two references: the second of each reuses what the first computed of the
    # reference's part, and the other reference (of the same shape) is not taken for it.
    for reference, shift in [(reference, shift) for reference in (_features(rng, 120), _features(rng, 120, 0.3))
                             for shift in (0.0, 0.8)]:  # fmt: skip
        bandwidth = median_bandwidth(reference)
        window = _features(rng, 30, shift=shift)
        observed, squared_mmd = _mmd_statistics(window, reference, bandwidth)
        assert observed == pytest.approx(_squared_mmd_by_definition(window, reference, bandwidth), rel=1e-9)
        pooled = np.concatenate([window, reference])
        expected = []
        for members in relabellings:
            outside = np.setdiff1d(np.arange(150), members)
            expected.append(_squared_mmd_by_definition(pooled[members], pooled[outside], bandwidth))
        assert squared_mmd(relabellings) == pytest.approx(expected, rel=1e-9)
