"""The demo's whole loop at reduced size: alerts come at the injected hour, not before."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.demo import DemoConfig, run_demo


def test_demo_alerts_at_the_injected_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = DemoConfig(hours=6, images_per_hour=30, reference_images=150, min_window=20, drift_hour=3)
    result = run_demo(tmp_path / "demo", config, say=lambda _: None)
    statuses = [(window["window_start"].hour, window["status"]) for window in result.report.windows]
    assert next(hour for hour, status in statuses if status == "drift") in (3, 4)
    assert all(status == "ok" for hour, status in statuses if hour < 3)
    drift_alerts = sorted(int(alert["window"]["start"][11:13]) for alert in result.alerts if alert["kind"] == "drift")
    assert drift_alerts[0] in (3, 4)
    assert all(alert["kind"] == "drift" for alert in result.alerts)  # one episode, nothing else
