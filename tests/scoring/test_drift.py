"""Drift tests, Holm and effect sizes against scipy and hand-computed values, in both score directions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from scoring.calibration import fit_tests
from scoring.drift import FiredTest, decide_window, effect_size, holm, psi
from scoring.references import ScoreReference, score_reference
from scoring.window_tests.beta_binomial import ood_rate_p_value
from scoring.window_tests.ks import _SCIPY_BY_DISTANCE, ks_test

SCORES = ("gradnorm", "energy", "msp", "maxlogit")
TESTS = ("ks", "beta_binomial")


def _reference(values: np.ndarray, score: str = "gradnorm", k: int | None = None) -> ScoreReference:
    ordered = np.sort(values)
    k = int(np.floor(ordered.size * 0.05)) if k is None else k
    reference = ScoreReference(score, float(ordered[k]), None, float(np.mean(ordered < ordered[k])), ordered)
    return fit_tests(reference, TESTS)


def _p_value(ood: int, window_size: int, reference: ScoreReference) -> float:
    state = reference.tests["beta_binomial"]
    return ood_rate_p_value(ood, window_size, state["reference_ood"], state["reference_size"])


def _references(rng: np.random.Generator, size: int = 2000) -> dict[str, dict[str, ScoreReference]]:
    return {"": {name: _reference(rng.normal(10, 1, size), name) for name in SCORES}}


def test_holm_on_known_p_values() -> None:
    levels, rejected = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    # Sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 stops; 0.04 is not rejected either.
    assert levels == pytest.approx([0.05 / 3, 0.05 / 1, 0.05 / 2, 0.05 / 4])
    assert rejected == [True, False, False, True]
    assert holm([0.2, 0.001], alpha=0.01) == ([0.01, 0.005], [False, True])


def test_ks_record_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    references = _references(rng)
    window = {"": {name: rng.normal(9.5, 1, 80) for name in SCORES}}
    decision = decide_window(window, references, alpha=0.01, min_window=50)
    record = next(r for r in decision.tests if (r.test, r.score) == ("ks", "msp"))
    expected = stats.ks_2samp(window[""]["msp"], references[""]["msp"].sample)
    assert (record.statistic, record.p_value) == pytest.approx((expected.statistic, expected.pvalue))


def test_ks_p_values_kept_by_distance_are_scipys_for_every_window_with_that_distance() -> None:
    rng = np.random.default_rng(3)
    _SCIPY_BY_DISTANCE.clear()
    windows = 0
    # Ties (rounded values), unequal sizes, sizes past scipy's exact limit, and windows beside the reference.
    for window_size, reference_size, decimals in [(30, 210, 1), (50, 350, 6), (37, 64, 0), (300, 12_000, 2)]:
        sample = np.sort(np.round(rng.normal(0, 1, reference_size), decimals))
        reference = ScoreReference("msp", 0.0, None, 0.05, sample)
        for shift in [0.0] * 40 + [0.3, 1.5]:
            window = np.round(rng.normal(shift, 1, window_size), decimals)
            record = ks_test(window, reference)
            expected = stats.ks_2samp(window, sample)
            assert record.p_value == float(expected.pvalue)
            assert record.statistic == pytest.approx(float(expected.statistic), abs=1e-12)
            windows += 1
    assert len(_SCIPY_BY_DISTANCE) <= windows - 20  # windows that met a distance seen before, and got its p-value


def test_a_decision_without_effect_sizes_tests_and_decides_alike() -> None:
    rng = np.random.default_rng(1)
    references = _references(rng)
    for shift in (10.0, 9.0):
        window = {"": {name: rng.normal(shift, 1, 80) for name in SCORES}}
        described = decide_window(window, references, alpha=0.01, min_window=50)
        bare = decide_window(window, references, alpha=0.01, min_window=50, describe=False)
        assert (bare.status, bare.tests, bare.effects) == (described.status, described.tests, [])
        assert described.effects


def test_ood_rate_p_value_is_beta_binomial_and_tends_to_the_binomial() -> None:
    small = _reference(np.arange(100, dtype=float), k=5)  # threshold 5.0, five reference values below it
    assert _p_value(12, 60, small) == pytest.approx(stats.betabinom(60, 6, 95).sf(11))
    huge = _reference(np.linspace(0, 1, 1_000_001), k=50_000)
    binomial = stats.binomtest(12, 100, 0.05, alternative="greater").pvalue
    assert _p_value(12, 100, huge) == pytest.approx(binomial, rel=1e-3)


def test_ood_rate_test_holds_its_level_over_references() -> None:
    rng = np.random.default_rng(1)
    fired = 0
    for _ in range(2000):  # a fresh reference and window each time: the unconditional level
        reference = _reference(rng.normal(size=200))
        window = rng.normal(size=100)
        fired += _p_value(int(np.sum(window < reference.threshold)), 100, reference) <= 0.05
    assert fired / 2000 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)


def test_effect_sizes_in_reference_units() -> None:
    reference = _reference(np.arange(1000, dtype=float))
    shifted = np.arange(1000, dtype=float) - 100.0
    effect = effect_size(shifted, reference, "cam")
    assert effect.wasserstein == pytest.approx(100.0 / np.std(reference.sample))
    assert effect.median_shift == pytest.approx(-100.0 / reference.iqr)
    assert effect.ood_rate == pytest.approx(0.15)
    assert effect.expected_ood_rate == pytest.approx(0.05)
    assert psi(np.arange(1000, dtype=float), reference) == pytest.approx(0.0, abs=1e-12)


def test_psi_by_hand() -> None:
    reference = _reference(np.arange(1000, dtype=float))
    window = np.full(100, 50.0)  # everything in the first decile
    expected = (1 - 0.1) * np.log(1 / 0.1) + 9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert psi(window, reference) == pytest.approx(expected)


def test_small_windows_are_insufficient_not_healthy() -> None:
    rng = np.random.default_rng(2)
    decision = decide_window({"": {name: rng.normal(0, 1, 30) for name in SCORES}}, _references(rng), min_window=50)
    assert decision.status == "insufficient_data"
    assert not decision.is_drift
    assert decision.insufficient_segments == [""]


def test_segments_use_their_own_reference_or_the_global_one() -> None:
    rng = np.random.default_rng(3)
    references = _references(rng)
    references["night"] = {name: _reference(rng.normal(6, 1, 2000), name) for name in SCORES}
    window = {
        "night": {name: rng.normal(6, 1, 100) for name in SCORES},  # healthy for a night camera
        "day": {name: rng.normal(10, 1, 100) for name in SCORES},
        "door": {name: rng.normal(10, 1, 10) for name in SCORES},
    }
    decision = decide_window(window, references, alpha=0.01, min_window=50)
    assert decision.status == "ok"
    assert decision.insufficient_segments == ["door"]
    assert decision.n == {"day": 100, "door": 10, "night": 100}
    assert len(decision.tests) == 2 * 2 * len(SCORES)
    assert min(record.threshold for record in decision.tests) == pytest.approx(0.01 / 16)


def test_drift_fires_and_says_which_score() -> None:
    rng = np.random.default_rng(4)
    references = _references(rng)
    window = {"": {name: rng.normal(10, 1, 200) for name in SCORES}}
    window[""]["msp"] = rng.normal(9.0, 1, 200)  # only MSP sees this shift
    decision = decide_window(window, references)
    assert decision.is_drift
    assert {fired.score for fired in decision.fired} == {"msp"}
    assert FiredTest("ks", "msp", "") in decision.fired
    record = decision.to_dict()
    assert record["is_drift"]
    assert record["fired"] == [{"test": f.test, "score": f.score, "segment": f.segment} for f in decision.fired]


def test_non_finite_scores_are_refused() -> None:
    rng = np.random.default_rng(5)
    window = {"": {name: np.r_[rng.normal(10, 1, 60), np.nan] for name in SCORES}}
    with pytest.raises(ValueError, match="NaN or inf"):
        decide_window(window, _references(rng))


def test_a_score_low_in_distribution_is_thresholded_tested_and_measured_from_above() -> None:
    rng = np.random.default_rng(6)
    healthy = rng.normal(10, 1, 2000)
    low = fit_tests(score_reference("distance", healthy, 0.95, side="high"), TESTS)
    high = fit_tests(score_reference("distance", -healthy, 0.95), TESTS)
    assert low.threshold == pytest.approx(-high.threshold)  # the same cut, mirrored
    assert low.expected_ood_rate == pytest.approx(0.05, abs=1e-3)
    assert np.mean(low.is_out_of_distribution(healthy)) == pytest.approx(0.05, abs=1e-3)
    far = rng.normal(12, 1, 100)  # larger distances: further out of distribution
    decision = decide_window({"": {"distance": far}}, {"": {"distance": low}})
    assert {(fired.test, fired.score) for fired in decision.fired} == {
        ("ks", "distance"),
        ("beta_binomial", "distance"),
    }
    (effect,) = decision.effects
    assert effect.ood_rate > 0.5
    assert effect.median_shift < 0  # negative is further out of distribution, whichever way the score points
    mirrored = decide_window({"": {"distance": -far}}, {"": {"distance": high}})
    assert [record.p_value for record in decision.tests] == pytest.approx([r.p_value for r in mirrored.tests])
    closer = decide_window({"": {"distance": rng.normal(8, 1, 100)}}, {"": {"distance": low}})
    assert closer.effects[0].ood_rate < 0.01  # smaller distances are not out of distribution, however shifted


def test_a_two_sided_value_is_bounded_on_both_sides_and_its_ood_rate_test_holds_its_level() -> None:
    rng = np.random.default_rng(7)
    reference = fit_tests(score_reference("brightness", rng.normal(size=2000), 0.95, side="both"), TESTS)
    assert reference.side == "both"
    assert (reference.lower, reference.upper) == pytest.approx((-1.96, 1.96), abs=0.15)
    assert reference.expected_ood_rate == pytest.approx(0.05, abs=2e-3)
    assert reference.tests["beta_binomial"]["bounds"] == 2
    fired = 0
    for _ in range(2000):  # a fresh reference and window each time: the unconditional level
        small = fit_tests(score_reference("brightness", rng.normal(size=200), 0.95, side="both"), TESTS)
        state = small.tests["beta_binomial"]
        ood = int(np.sum(small.is_out_of_distribution(rng.normal(size=100))))
        p_value = ood_rate_p_value(ood, 100, state["reference_ood"], state["reference_size"], state["bounds"])
        fired += p_value <= 0.05
    assert fired / 2000 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
    for shift, sign in ((-1.0, -1), (1.0, 1)):  # darker and brighter are both out of distribution
        decision = decide_window({"": {"brightness": rng.normal(shift, 1, 100)}}, {"": {"brightness": reference}})
        assert decision.is_drift
        assert np.sign(decision.effects[0].median_shift) == sign


def test_a_property_that_applies_to_too_few_images_of_a_window_is_not_tested() -> None:
    rng = np.random.default_rng(8)
    quality = fit_tests(score_reference("jpeg_quality", rng.normal(90, 2, 500), 0.95, side="both"), TESTS)
    msp = _reference(rng.normal(10, 1, 500), "msp")
    window = {"msp": rng.normal(10, 1, 80), "jpeg_quality": np.r_[rng.normal(90, 2, 20), np.full(60, np.nan)]}
    decision = decide_window({"": window}, {"": {"msp": msp, "jpeg_quality": quality}}, min_window=50)
    assert {record.score for record in decision.tests} == {"msp"}  # 20 JPEGs of 80 images: too few to test
    window["jpeg_quality"] = np.r_[rng.normal(60, 2, 60), np.full(20, np.nan)]  # recompressed, PNGs beside
    decision = decide_window({"": window}, {"": {"msp": msp, "jpeg_quality": quality}}, min_window=50)
    assert {fired.score for fired in decision.fired} == {"jpeg_quality"}
    with pytest.raises(ValueError, match="NaN or inf"):  # a score is never allowed to be missing
        decide_window({"": {**window, "msp": np.full(80, np.nan)}}, {"": {"msp": msp}})
