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
CUSUM = Cusum(drift=1.0, limit=5.0, target_run_length=1000, run_length=1000.0, simulated=1, simulated_windows=1)


def decision(p_value: float, segments: tuple[str, ...] = ("",)) -> WindowDecision:
    records = [Record("beta_binomial", "sharpness", segment, 0.1, p_value, 1e-4, False) for segment in segments]
    return WindowDecision("ok", 0.01, dict.fromkeys(segments, 100), records)


def statistic(charts: SequentialCharts, window: int, segment: str = "") -> float:
    return charts.update(START + window * HOUR, decision(P, (segment,)))[segment].statistic


P = 0.001  # evidence 3.09 a window: 2.09 above the allowance


def test_each_window_adds_its_evidence_once_across_runs_and_retries(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    step = evidence(P) - CUSUM.drift
    charts = SequentialCharts(store, CUSUM, "3")
    assert statistic(charts, 0) == pytest.approx(step, abs=1e-3)
    assert statistic(charts, 1) == pytest.approx(2 * step, abs=1e-3)
    # A retry of window 1, and the next run reading OUT afresh, start from window 0's charts.
    assert statistic(charts, 1) == pytest.approx(2 * step, abs=1e-3)
    again = SequentialCharts(store, CUSUM, "3")
    assert statistic(again, 1) == pytest.approx(2 * step, abs=1e-3)
    third = again.update(START + 2 * HOUR, decision(P))[""]
    assert third.signalled  # 6.3 > 5: and the charts restart
    assert third.windows == 0
    assert again.windows["2026-11-26T02-00-00Z"][""]["statistics"] == {"sharpness/beta_binomial": 0.0}


def test_a_window_decided_again_with_other_images_carries_the_change_to_the_windows_after_it(tmp_path: Path) -> None:
    charts = SequentialCharts(OutputStore(str(tmp_path)), CUSUM, "3")
    for window in range(3):
        charts.update(START + window * HOUR, decision(0.5))  # healthy: nothing accumulates
    charts.update(START, decision(P))  # late images made the first window worse
    after = charts.windows["2026-11-26T02-00-00Z"][""]["statistic"]
    assert after == pytest.approx(evidence(P) - 3 * CUSUM.drift, abs=1e-3)


def test_segments_keep_charts_of_their_own_and_a_new_threshold_version_starts_them_afresh(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    charts = SequentialCharts(store, CUSUM, "3")
    steps = charts.update(START, decision(P, ("cam-1", "cam-2")))
    assert set(steps) == {"cam-1", "cam-2"}
    assert statistic(charts, 1, "cam-1") == pytest.approx(2 * (evidence(P) - 1), abs=1e-3)
    assert charts.update(START + 2 * HOUR, decision(P, ("cam-2",)))["cam-2"].statistic == pytest.approx(
        2 * (evidence(P) - 1), abs=1e-3
    )
    fresh = SequentialCharts(store, CUSUM, "4")
    assert statistic(fresh, 3, "cam-1") == pytest.approx(evidence(P) - 1, abs=1e-3)


def test_a_segment_too_small_to_test_leaves_its_charts_as_they_were(tmp_path: Path) -> None:
    charts = SequentialCharts(OutputStore(str(tmp_path)), CUSUM, "3")
    statistic(charts, 0)
    small = WindowDecision("insufficient_data", 0.01, {"": 10}, [], insufficient_segments=[""])
    assert charts.update(START + HOUR, small) == {}
    assert statistic(charts, 2) == pytest.approx(2 * (evidence(P) - 1), abs=1e-3)
