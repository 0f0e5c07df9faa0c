"""The CUSUM across windows: evidence from p-values, its steps, a limit whose run length a simulation checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from scoring.sequential import Cusum, evidence, fit_cusum, null_model, run_lengths


def test_evidence_is_standard_normal_in_p_and_clipped() -> None:
    assert evidence(0.5) == pytest.approx(0.0)
    assert evidence(0.001) == pytest.approx(3.090, abs=1e-3)
    assert evidence(1e-300) == evidence(1e-12) == pytest.approx(7.034, abs=1e-3)
    assert math.isnan(evidence(float("nan")))


def test_a_chart_accumulates_evidence_above_its_allowance_and_restarts_after_it_signals() -> None:
    cusum = Cusum(drift=1.0, limit=5.0, target_run_length=1000, run_length=1000.0, simulated=1, simulated_windows=1)
    step = cusum.step({}, {"msp/ks": 3.0, "noise/ks": -2.0})
    assert step.statistics == {"msp/ks": 2.0, "noise/ks": 0.0}
    assert not step.signalled
    assert step.windows == 1
    step = cusum.step(step.statistics, {"msp/ks": 3.0, "noise/ks": float("nan")}, step.windows)
    assert step.statistics["msp/ks"] == 4.0
    assert step.windows == 2
    step = cusum.step(step.statistics, {"msp/ks": 3.0}, step.windows)  # 6 > 5
    assert step.signalled
    assert step.chart == "msp/ks"
    assert step.statistic == 6.0
    assert step.statistics == {"msp/ks": 0.0, "noise/ks": 0.0}
    assert step.windows == 0


def test_the_fitted_limit_is_the_smallest_reaching_the_run_length_and_a_fresh_simulation_agrees() -> None:
    null = np.random.default_rng(0).standard_normal((400, 20))
    cusum = fit_cusum(null, reference_share=0.1, target_run_length=200, sequences=200)
    assert cusum.run_length >= 200
    simulate = {"drift": 1.0, "reference_share": 0.1, "length": 600}
    lower = run_lengths(null_model(null), [cusum.limit - 0.05], sequences=200, seed=0, **simulate)
    assert lower.mean() < 200
    # Checked on sequences the fit never saw, of charts exactly independent.
    fresh = run_lengths(np.eye(20), [cusum.limit], sequences=400, seed=7, **simulate)
    assert 160 < fresh.mean() < 260


def test_a_finite_reference_and_correlated_charts_move_the_limit_the_way_they_should() -> None:
    rng = np.random.default_rng(1)
    independent = rng.standard_normal((400, 20))
    shared = rng.standard_normal((400, 1)) + 0.2 * rng.standard_normal((400, 20))  # 20 charts that move together
    base = fit_cusum(independent, reference_share=0.0, target_run_length=200)
    assert fit_cusum(independent, reference_share=0.2, target_run_length=200).limit > base.limit
    assert fit_cusum(shared, reference_share=0.0, target_run_length=200).limit < base.limit


def test_a_shift_no_window_shows_alone_signals_within_three_windows() -> None:
    cusum = fit_cusum(np.random.default_rng(2).standard_normal((400, 40)), reference_share=0.1)
    statistics: dict[str, float] = {}
    windows = 0
    for window in range(1, 4):  # noqa: B007 - read after the loop
        step = cusum.step(statistics, {"sharpness/beta_binomial": 3.5, "msp/ks": 0.3}, windows)
        statistics, windows = step.statistics, step.windows
        if step.signalled:
            break
    assert step.signalled, (cusum, step)
    assert step.chart == "sharpness/beta_binomial"
    assert window <= 3
    # No window alone pages on it: p 2.3e-4 is above Holm's first level over 70 tests at alpha 1%.
    assert stats.norm.sf(3.5) > 0.01 / 70


def test_the_null_must_hold_windows() -> None:
    with pytest.raises(ValueError, match="at least two windows"):
        fit_cusum(np.zeros((1, 3)), reference_share=0.1)
    with pytest.raises(ValueError, match="reference_share"):
        fit_cusum(np.zeros((5, 3)), reference_share=1.0)
