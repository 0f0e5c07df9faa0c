"""The CUSUM across windows: evidence from p-values, its steps, a limit whose run length a simulation checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from scoring.sequential import ChartState, Cusum, evidence, fit_cusum, null_model, run_lengths


def cusum(burn_in: int = 1, limit: float = 5.0) -> Cusum:
    return Cusum(drift=1.0, limit=limit, burn_in=burn_in, target_run_length=1000, run_length=1000.0, simulated=1,
                 simulated_windows=1)  # fmt: skip


def test_evidence_is_standard_normal_in_p_and_clipped() -> None:
    assert evidence(0.5) == pytest.approx(0.0)
    assert evidence(0.001) == pytest.approx(3.090, abs=1e-3)
    assert evidence(1e-300) == evidence(1e-12) == pytest.approx(7.034, abs=1e-3)
    assert math.isnan(evidence(float("nan")))


def test_charts_set_their_baseline_then_accumulate_evidence_above_it_and_restart_after_a_signal() -> None:
    charts = cusum(burn_in=2)
    step = charts.step(ChartState(), {"msp/ks": 0.5, "noise/ks": -1.0})
    assert step.burning_in
    assert not step.signalled
    step = charts.step(step.state, {"msp/ks": 1.5, "noise/ks": float("nan")})
    assert step.state.baseline == {"msp/ks": (2.0, 2), "noise/ks": (-1.0, 1)}
    assert step.state.statistics == {"msp/ks": 0.0, "noise/ks": 0.0}
    step = charts.step(step.state, {"msp/ks": 4.0, "noise/ks": -2.0})  # 4 - 1 (baseline) - 1 (allowance)
    assert not step.burning_in
    assert step.state.statistics == {"msp/ks": 2.0, "noise/ks": 0.0}
    assert step.windows == 1
    step = charts.step(step.state, {"msp/ks": 4.0, "noise/ks": float("nan")})
    assert step.state.statistics["msp/ks"] == 4.0
    assert step.windows == 2
    step = charts.step(step.state, {"msp/ks": 4.0})  # 6 > 5
    assert step.signalled
    assert (step.chart, step.statistic) == ("msp/ks", 6.0)
    assert step.state.statistics == {"msp/ks": 0.0, "noise/ks": 0.0}
    assert step.windows == 0
    assert ChartState.from_dict(step.state.to_dict()) == step.state


def test_the_fitted_limit_is_the_smallest_reaching_the_run_length_and_a_fresh_simulation_agrees() -> None:
    null = np.random.default_rng(0).standard_normal((400, 20))
    fitted = fit_cusum(null, burn_in=10, target_run_length=200, sequences=200)
    assert fitted.run_length >= 200
    simulate = {"drift": 1.0, "burn_in": 10, "length": 600}
    lower = run_lengths(null_model(null), [fitted.limit - 0.05], sequences=200, seed=0, **simulate)
    assert lower.mean() < 200
    # Checked on sequences the fit never saw, of charts exactly independent.
    fresh = run_lengths(np.eye(20), [fitted.limit], sequences=400, seed=7, **simulate)
    assert 160 < fresh.mean() < 260


def test_a_shorter_burn_in_and_independent_charts_need_a_higher_limit() -> None:
    rng = np.random.default_rng(1)
    independent = rng.standard_normal((400, 20))
    shared = rng.standard_normal((400, 1)) + 0.2 * rng.standard_normal((400, 20))  # 20 charts that move together
    base = fit_cusum(independent, burn_in=24, target_run_length=200)
    assert fit_cusum(independent, burn_in=3, target_run_length=200).limit > base.limit
    assert fit_cusum(shared, burn_in=24, target_run_length=200).limit < base.limit


def test_a_shift_no_window_shows_alone_signals_within_three_windows_of_its_start() -> None:
    fitted = fit_cusum(np.random.default_rng(2).standard_normal((400, 70)))
    state = ChartState()
    for _ in range(fitted.burn_in):
        state = fitted.step(state, {"sharpness/beta_binomial": 0.1, "msp/ks": -0.2}).state
    steps = []
    for _ in range(3):
        steps.append(fitted.step(state, {"sharpness/beta_binomial": 3.6, "msp/ks": 0.3}))
        state = steps[-1].state
    signalled = [step for step in steps if step.signalled]
    assert signalled, (fitted, steps)
    assert signalled[0].chart == "sharpness/beta_binomial"
    # No window alone pages on it: p 1.6e-4 is above Holm's first level over 70 tests at alpha 1%.
    assert stats.norm.sf(3.6) > 0.01 / 70


def test_the_null_must_hold_windows() -> None:
    with pytest.raises(ValueError, match="at least two windows"):
        fit_cusum(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="burn_in"):
        fit_cusum(np.zeros((5, 3)), burn_in=0)


def test_a_chart_that_starts_testing_after_the_others_burns_in_on_its_own_windows() -> None:
    charts = cusum(burn_in=2)
    state = ChartState()
    for _ in range(2):
        state = charts.step(state, {"msp/ks": 3.0}).state
    # JPEG quality starts being tested (JPEGs arrive) at its steady level, 3: its own two windows set its baseline.
    for _ in range(4):
        step = charts.step(state, {"msp/ks": 3.0, "jpeg_quality/ks": 3.0})
        state = step.state
    assert state.baseline["jpeg_quality/ks"] == (6.0, 2)
    assert state.statistics == {"msp/ks": 0.0, "jpeg_quality/ks": 0.0}
    assert not step.signalled
