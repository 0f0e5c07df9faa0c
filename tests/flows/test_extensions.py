"""A new window test and a new fitted score, one test-only file each, through calibration, decision and payload
with no other change: the real pipeline, MLflow store and webhook receiver."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from flows.alerts import SECRET_ENV
from flows.calibrate import calibrate_reference
from flows.monitor import MonitorConfig, run_monitor
from flows.monitor.paging import most_out_of_distribution
from flows.registry import ThresholdRegistry
from pipelines.store import OutputStore
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig
from scoring.drift import FiredTest
from tests.flows.receiver import Receiver
from tests.flows.test_monitor import HOUR, START, TINY, _flat, _noise


@pytest.mark.usefixtures("toy_extensions")
def test_a_window_test_and_a_fitted_score_flow_through_calibration_decision_and_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    registry = ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for index in range(150):
        _noise(tmp_path / "reference" / f"{index}.png", 1000 + index, START - 48 * HOUR)
    scoring = ScoringSettings(model=TINY)
    config = CalibrationConfig(min_window=20, check_windows=50, check_window_sizes=(20,))
    version, calibration = calibrate_reference(
        str(tmp_path / "reference"), registry=registry, scoring=scoring, config=config
    )
    assert sorted(calibration.tests) == ["beta_binomial", "chi_square", "decile_chi_square", "ks", "mmd"]
    assert "feature_distance" in calibration.scores
    assert calibration.references[""]["feature_distance"].side == "high"
    assert set(calibration.fitted_scores) == {"feature_distance", "vim", "features"}  # beside the shipped ones
    assert calibration.reference_images == 150 - 45  # the images the score learned from are kept out
    params = registry.client.get_run(version.run_id).data.params
    assert params["fitted_score_images"] == "45"
    registry.approve(version.name, version.version, by="test")

    for hour, make in ((0, _noise), (1, _flat)):
        for index in range(30):
            make(tmp_path / "feed" / f"h{hour}-{index}.png", 100 * hour + index, START + hour * HOUR)
    receiver = Receiver()
    try:
        monitor = MonitorConfig(source=str(tmp_path / "feed"), out=str(tmp_path / "out"), scoring=scoring,
                                webhooks=(receiver.url,))  # fmt: skip
        report = run_monitor(monitor, registry=registry, now=START + 2 * HOUR + dt.timedelta(minutes=5))
    finally:
        receiver.close()
    assert [outcome.status for outcome in report.windows] == ["ok", "drift"]
    healthy, drifted = report.windows
    assert FiredTest("decile_chi_square", "feature_distance", "") in drifted.fired
    assert not healthy.fired

    scores = OutputStore(str(tmp_path / "out")).read_table("scores")
    assert "feature_distance" in scores.column_names
    decisions = OutputStore(str(tmp_path / "out")).read_table("decisions").to_pylist()
    tested = {(record["test"], record["score"]) for record in json.loads(decisions[0]["decision"])["tests"]}
    assert ("decile_chi_square", "feature_distance") in tested
    assert {"test": "decile_chi_square", "score": "feature_distance", "segment": ""} in decisions[1]["fired"]

    (alert,) = [post["json"] for post in receiver.received if post["json"]["kind"] == "drift"]
    assert {"test": "decile_chi_square", "score": "feature_distance", "segment": ""} in alert["decision"]["fired"]
    assert any(record["test"] == "decile_chi_square" for record in alert["decision"]["tests"])


@pytest.mark.usefixtures("toy_extensions")
def test_an_alert_shows_the_images_furthest_out_whichever_way_the_score_points() -> None:
    rows = [{"uri": f"{index}.png", "msp": index / 10, "feature_distance": float(index)} for index in range(10)]
    score, high = most_out_of_distribution(rows, [FiredTest("ks", "feature_distance", "")], 3)
    assert (score, [row["uri"] for row in high]) == ("feature_distance", ["9.png", "8.png", "7.png"])
    score, low = most_out_of_distribution(rows, [FiredTest("ks", "msp", "")], 3)
    assert (score, [row["uri"] for row in low]) == ("msp", ["0.png", "1.png", "2.png"])


def test_an_alert_on_an_image_property_shows_the_images_furthest_from_its_reference_median() -> None:
    import numpy as np

    from scoring.calibration import calibrate

    rng = np.random.default_rng(0)
    reference = {name: rng.normal(10, 1, 300) for name in ("gradnorm", "energy", "msp", "maxlogit")}
    calibration = calibrate(
        {**reference, "brightness": rng.normal(0.5, 0.05, 300)},
        model_id="m@1",
        config=CalibrationConfig(check_windows=10, check_window_sizes=(50,)),
    )
    rows = [{"uri": f"{value}.png", "brightness": value} for value in (0.45, 0.1, 0.52, 0.95, 0.6)]
    _, furthest = most_out_of_distribution(rows, [FiredTest("ks", "brightness", "")], 2, calibration)
    assert [row["uri"] for row in furthest] == ["0.95.png", "0.1.png"]  # too bright and too dark alike
