"""The CUSUM charts across monitoring runs: kept in OUT by window, so deciding a window again never counts twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.monitor.sequential import SequentialCharts
from pipelines.store import OutputStore
from scoring.drift import TestRecord as Record
from scoring.drift import WindowDecision
from scoring.sequential import Cusum, evidence

START = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
# A burn-in of one window, whose evidence is 0: the baseline is 0 and each later window adds z - 1.
CUSUM = Cusum(
    drift=1.0, limit=5.0, burn_in=1, target_run_length=1000, run_length=1000.0, simulated=1, simulated_windows=1
)


def decision(p_value: float, segments: tuple[str, ...] = ("",)) -> WindowDecision:
    records = [Record("beta_binomial", "sharpness", segment, 0.1, p_value, 1e-4, False) for segment in segments]
    return WindowDecision("ok", 0.01, dict.fromkeys(segments, 100), records)


def statistic(charts: SequentialCharts, window: int, segment: str = "", p_value: float = 0.001) -> float:
    return charts.update(START + window * HOUR, decision(p_value, (segment,)))[segment].statistic


P = 0.001  # evidence 3.09 a window: 2.09 above the allowance
STEP = evidence(P) - CUSUM.drift
HEALTHY = 0.5  # evidence 0: the burn-in window's, so the baseline is 0


def test_each_window_adds_its_evidence_once_across_runs_and_retries(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    charts = SequentialCharts(store, CUSUM, "3")
    burn_in = charts.update(START, decision(P))[""]
    assert burn_in.burning_in  # its evidence sets the baseline, however strong
    assert burn_in.statistic == 0.0
    charts = SequentialCharts(store, CUSUM, "3")
    charts.update(START, decision(HEALTHY))  # the first window decided again: the baseline is 0 now
    assert statistic(charts, 1) == pytest.approx(STEP, abs=1e-3)
    assert statistic(charts, 2) == pytest.approx(2 * STEP, abs=1e-3)
    # A retry of window 2, and the next run reading OUT afresh, start from window 1's charts.
    assert statistic(charts, 2) == pytest.approx(2 * STEP, abs=1e-3)
    again = SequentialCharts(store, CUSUM, "3")
    assert statistic(again, 2) == pytest.approx(2 * STEP, abs=1e-3)
    third = again.update(START + 3 * HOUR, decision(P))[""]
    assert third.signalled  # 6.3 > 5: and the charts restart
    assert third.windows == 0
    assert again.windows["2026-11-26T03-00-00Z"][""]["state"]["statistics"] == {"sharpness/beta_binomial": 0.0}


def test_a_window_decided_again_with_other_images_carries_the_change_to_the_windows_after_it(tmp_path: Path) -> None:
    charts = SequentialCharts(OutputStore(str(tmp_path)), CUSUM, "3")
    for window in range(4):
        charts.update(START + window * HOUR, decision(HEALTHY))  # healthy: nothing accumulates
    charts.update(START + HOUR, decision(P))  # late images made the second window worse
    after = charts.windows["2026-11-26T03-00-00Z"][""]["statistic"]
    assert after == pytest.approx(STEP - 2 * CUSUM.drift, abs=1e-3)


def test_segments_keep_charts_of_their_own_and_a_new_threshold_version_starts_them_afresh(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    charts = SequentialCharts(store, CUSUM, "3")
    charts.update(START, decision(HEALTHY, ("cam-1", "cam-2")))
    steps = charts.update(START + HOUR, decision(P, ("cam-1", "cam-2")))
    assert set(steps) == {"cam-1", "cam-2"}
    assert statistic(charts, 2, "cam-1") == pytest.approx(2 * STEP, abs=1e-3)
    assert statistic(charts, 3, "cam-2") == pytest.approx(2 * STEP, abs=1e-3)
    fresh = SequentialCharts(store, CUSUM, "4")
    assert fresh.update(START + 4 * HOUR, decision(P, ("cam-1",)))["cam-1"].burning_in


def test_a_segment_too_small_to_test_leaves_its_charts_as_they_were(tmp_path: Path) -> None:
    charts = SequentialCharts(OutputStore(str(tmp_path)), CUSUM, "3")
    statistic(charts, 0, p_value=HEALTHY)
    statistic(charts, 1)
    small = WindowDecision("insufficient_data", 0.01, {"": 10}, [], insufficient_segments=[""])
    assert charts.update(START + 2 * HOUR, small) == {}
    assert statistic(charts, 3) == pytest.approx(2 * STEP, abs=1e-3)
