"""The monitor end to end: real pipeline, real MLflow store, real webhook receiver on loopback."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.alerts import SECRET_ENV, verify
from flows.calibrate import calibrate_reference
from flows.monitor import MonitorConfig, run_monitor
from flows.registry import NoApprovedThresholdError, ThresholdModelMismatchError, ThresholdRegistry
from pipelines.store import OutputStore
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig
from tests.flows.receiver import Receiver

TINY = "tests.scoring.tiny_models:build"
HOUR = dt.timedelta(hours=1)
START = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)


def _noise(path: Path, seed: int, when: dt.datetime) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    _save(Image.fromarray(pixels), path, when)


def _flat(path: Path, seed: int, when: dt.datetime) -> None:
    colour = tuple(int(c) for c in np.random.default_rng(seed).integers(0, 60, 3))  # dark, flat frames: a lens cap
    _save(Image.new("RGB", (64, 48), colour), path, when)


def _save(image: Image.Image, path: Path, when: dt.datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    os.utime(path, (when.timestamp(), when.timestamp()))


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ThresholdRegistry:
    monkeypatch.chdir(tmp_path)
    # An absolute path: MLflow caches stores by URI within a process.
    return ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _approve(registry: ThresholdRegistry, tmp_path: Path) -> None:
    for index in range(120):
        _noise(tmp_path / "reference" / f"{index}.png", 1000 + index, START - 48 * HOUR)
    config = CalibrationConfig(min_window=20, check_windows=50, check_window_sizes=(20,))
    version, _ = calibrate_reference(
        str(tmp_path / "reference"), registry=registry, scoring=ScoringSettings(model=TINY), config=config
    )
    registry.approve(version.name, version.version, by="test")


def test_monitor_pages_drift_no_data_and_recovery_once(tmp_path: Path, registry, monkeypatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    for hour, make in ((0, _noise), (1, _noise), (2, _flat), (4, _noise)):  # hour 3 is empty: the feed went dark
        for index in range(30):
            make(feed / f"h{hour}-{index}.png", 100 * hour + index, START + hour * HOUR + dt.timedelta(minutes=index))
    receiver = Receiver()
    try:
        config = MonitorConfig(
            source=str(feed), out=str(tmp_path / "out"), scoring=ScoringSettings(model=TINY), webhooks=(receiver.url,)
        )
        report = run_monitor(config, registry=registry, now=START + 5 * HOUR + dt.timedelta(minutes=7))
        statuses = [(w.window_start.hour, w.status) for w in report.windows]
        assert statuses == [(10, "ok"), (11, "ok"), (12, "drift"), (13, "no_data"), (14, "ok")]
        kinds = [(post["json"]["kind"], post["json"]["window"]["start"][11:13]) for post in receiver.received]
        # The lens-cap frames are also tiny files, which the data-quality gate reports on its own.
        assert sorted(kinds) == [("data_quality", "12"), ("drift", "12"), ("no_data", "13"), ("recovered", "14")]
        quality = next(post["json"] for post in receiver.received if post["json"]["kind"] == "data_quality")
        assert {f["column"] for f in quality["decision"]["failed_expectations"]} == {"bytes"}
        drift = next(post for post in receiver.received if post["json"]["kind"] == "drift")
        assert verify(
            "s3cret",
            drift["headers"]["X-Gradwatch-Timestamp"],
            drift["body"],
            drift["headers"]["X-Gradwatch-Signature"],
        )
        assert all("/h2-" in uri for uri in drift["json"]["most_out_of_distribution_images"])
        fired = [t for t in drift["json"]["decision"]["tests"] if t["is_drift"]]
        # What moved, in words, most significant first, one line per fired test.
        assert drift["json"]["what_moved"] == [t["summary"] for t in sorted(fired, key=lambda t: t["p_value"])]
        assert any("IQR" in line and "the reference median" in line for line in drift["json"]["what_moved"])
        assert drift["json"]["links"]["mlflow_run_id"] == report.mlflow_run_id
        # Said in a sentence, with how urgent it is and what it likely costs (no labels: the fall in confidence).
        severity = drift["json"]["severity"]
        assert severity["level"] in ("page", "warn")
        assert severity["reasons"]
        assert f"({severity['level']}): " in drift["json"]["summary"]
        drop = drift["json"]["estimated_accuracy"]["drop"]
        assert drop["low"] <= drop["estimate"] <= drop["high"]
        assert drift["json"]["summary"].endswith(("points)", "confidence shows no loss of accuracy"))
        assert "mean confidence" in drift["json"]["summary"]
        assert {post["json"]["kind"]: post["json"]["severity"]["level"] for post in receiver.received} == {
            "drift": severity["level"], "data_quality": "warn", "no_data": "page", "recovered": "info",
        }  # fmt: skip

        again = run_monitor(config, registry=registry, now=START + 5 * HOUR + dt.timedelta(minutes=7))
        assert again.windows == []
        assert len(receiver.received) == 4

        _noise(feed / "late.png", 999, START + HOUR + dt.timedelta(minutes=59))  # a late image for 11:00
        late = run_monitor(config, registry=registry, now=START + 5 * HOUR + dt.timedelta(minutes=7))
        assert [(w.window_start.hour, w.scored) for w in late.windows] == [(11, 31)]
        assert len(receiver.received) == 4
    finally:
        receiver.close()

    decisions = OutputStore(str(tmp_path / "out")).read_table("decisions").to_pylist()
    assert sorted((row["window_start"].hour, row["status"]) for row in decisions) == [
        (10, "ok"), (11, "ok"), (12, "drift"), (13, "no_data"), (14, "ok"),
    ]  # fmt: skip
    history = registry.client.get_metric_history(report.mlflow_run_id, "drift")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.0, 0.0, 1.0, 0.0]
    drifted = next(row for row in decisions if row["status"] == "drift")
    assert json.loads(drifted["decision"])["what_moved"] == drift["json"]["what_moved"]
    # Every tested window carries its CUSUM charts and its estimated accuracy, in the table and in MLflow.
    tested = [json.loads(row["decision"]) for row in decisions if row["status"] in ("ok", "drift")]
    assert all(set(d["sequential"]) == set(d["accuracy"]) == {""} for d in tested)
    metrics = registry.client.get_run(report.mlflow_run_id).data.metrics
    assert {"cusum", "cusum_limit", "confidence_drop"} <= set(metrics)


def test_monitor_refuses_to_run_without_approved_thresholds(tmp_path: Path, registry) -> None:
    feed = tmp_path / "feed"
    _noise(feed / "a.png", 1, START)
    config = MonitorConfig(source=str(feed), out=str(tmp_path / "out"), scoring=ScoringSettings(model=TINY))
    with pytest.raises(NoApprovedThresholdError):
        run_monitor(config, registry=registry, now=START + 2 * HOUR)


@pytest.mark.parametrize(
    ("setting", "monitored", "calibrated"),
    [("precision", "bf16", "fp32"), ("decoder", "device", "host"), ("temperature", 2.0, 1.0)],
)
def test_monitor_refuses_thresholds_calibrated_with_other_settings(
    tmp_path: Path, registry, setting: str, monitored: str, calibrated: str
) -> None:
    _approve(registry, tmp_path)  # in fp32, decoded on the host
    feed = tmp_path / "feed"
    _noise(feed / "a.png", 1, START)
    scoring = ScoringSettings(model=TINY, **{setting: monitored})
    config = MonitorConfig(source=str(feed), out=str(tmp_path / "out"), scoring=scoring)
    with pytest.raises(ThresholdModelMismatchError, match=f"calibrated with --{setting} {calibrated}"):
        run_monitor(config, registry=registry, now=START + 2 * HOUR)
    assert not (tmp_path / "out" / "scores").exists()


def test_a_camera_that_stops_while_others_go_on_is_no_data(tmp_path: Path, registry, monkeypatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    _approve(registry, tmp_path)
    rows = ["uri,event_time,segment"]
    for hour, cameras in ((0, ("cam-a", "cam-b")), (1, ("cam-a",))):
        for camera in cameras:
            for index in range(25):
                path = tmp_path / "feed" / f"{camera}-{hour}-{index}.png"
                when = START + hour * HOUR + dt.timedelta(minutes=2 * index)
                _noise(path, 7000 + 100 * hour + index + (50 if camera == "cam-b" else 0), when)
                rows.append(f"{path},{when.isoformat()},{camera}")
    (tmp_path / "feed.csv").write_text("\n".join(rows) + "\n")
    receiver = Receiver()
    try:
        config = MonitorConfig(source=str(tmp_path / "feed.csv"), out=str(tmp_path / "out"),
                               scoring=ScoringSettings(model=TINY), webhooks=(receiver.url,))  # fmt: skip
        report = run_monitor(config, registry=registry, now=START + 2 * HOUR + dt.timedelta(minutes=5))
    finally:
        receiver.close()
    assert [w.status for w in report.windows] == ["ok", "ok"]
    alerts = [(p["json"]["kind"], p["json"]["segment"], p["json"]["window"]["start"][11:13]) for p in receiver.received]
    assert alerts == [("no_data", "cam-b", "11")]


def test_each_window_is_scored_as_configured_with_what_the_calibration_fitted() -> None:
    from flows.monitor.window import scoring_run
    from pipelines.settings import PipelineSettings
    from scoring.calibration import calibrate

    rng = np.random.default_rng(0)
    calibration = calibrate(
        {name: rng.normal(size=200) for name in ("gradnorm", "energy", "msp", "maxlogit")},
        model_id="m@1",
        config=CalibrationConfig(check_windows=10, check_window_sizes=(50,)),
        fitted_scores={"feature_distance": {"mean": [0.5]}},
    )
    pipeline = PipelineSettings(runner="FlinkRunner", beam_options=("flink_master=jobmanager:8081",))
    scoring = ScoringSettings(model=TINY, precision="fp16")
    config = MonitorConfig(source="s3://feed/", out="s3://out", scoring=scoring, pipeline=pipeline)
    run = scoring_run(config, calibration, START, START + HOUR)
    assert (run.scoring, run.pipeline) == (scoring, pipeline)
    assert (run.since, run.until, run.window) == (START, START + HOUR, HOUR)
    assert run.fitted_scores == {"feature_distance": {"mean": [0.5]}}


def test_a_window_retried_after_a_failure_still_pages(tmp_path: Path, registry, monkeypatch) -> None:
    from flows.monitor import Monitor

    _approve(registry, tmp_path)
    for index in range(30):
        _flat(tmp_path / "feed" / f"{index}.png", index, START + dt.timedelta(minutes=index))
    config = MonitorConfig(
        source=str(tmp_path / "feed"), out=str(tmp_path / "out"), scoring=ScoringSettings(model=TINY)
    )
    monitor = Monitor(config, now=START + HOUR + dt.timedelta(minutes=5))
    monitor.load_thresholds(registry)
    (window,) = monitor.plan()
    log_window = registry.log_window

    def unreachable_once(*args, **kwargs) -> None:
        monkeypatch.setattr(registry, "log_window", log_window)
        raise ConnectionError("MLflow went away")  # after the decision, before the alerts are queued

    monkeypatch.setattr(registry, "log_window", unreachable_once)
    with pytest.raises(ConnectionError):
        monitor.process(window)
    assert monitor.process(window).status == "drift"  # the orchestrator's retry
    assert "drift" in {entry["alert"]["kind"] for _, entry in monitor.outbox.pending()}


def test_consecutive_planned_windows_share_a_scoring_run() -> None:
    from flows.monitor.planning import scoring_runs
    from pipelines.records import ImageRef

    def refs(count: int) -> list[ImageRef]:
        return [ImageRef(uri=f"file:///{index}.png", event_time=START, segment="") for index in range(count)]

    hours = [START + hour * HOUR for hour in range(8)]
    images = {hours[0]: refs(3), hours[1]: refs(3), hours[3]: refs(2), hours[4]: refs(4), hours[6]: refs(1)}
    config = MonitorConfig(source="feed", out="out", images_per_scoring_run=6)
    # Hour 2 is planned and empty (it does not break the run); hour 5 is not planned (current), so a run stops there;
    # hours 3 and 4 hold 6 images, which the cap of 6 keeps together, as it splits 3 + 3 from 2.
    planned = [hours[0], hours[1], hours[2], hours[3], hours[4], hours[6], hours[7]]
    assert scoring_runs(planned, images, config) == [[hours[0], hours[1]], [hours[3], hours[4]], [hours[6]]]
    one_run = MonitorConfig(source="feed", out="out")
    assert scoring_runs(planned[:5], images, one_run) == [[hours[0], hours[1], hours[3], hours[4]]]


def test_windows_scored_in_one_run_decide_as_windows_scored_alone(tmp_path: Path, registry, monkeypatch) -> None:
    import flows.monitor.window as window_module

    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    for hour, make in ((0, _noise), (1, _flat), (3, _noise)):
        for index in range(25):
            make(feed / f"h{hour}-{index}.png", 100 * hour + index, START + hour * HOUR + dt.timedelta(minutes=index))
    (feed / "h0-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    os.utime(feed / "h0-broken.jpg", (START.timestamp() + 60, START.timestamp() + 60))
    runs: list[tuple[dt.datetime, dt.datetime]] = []
    run_scoring = window_module.run_scoring

    def counted(config, **kwargs):
        runs.append((config.since, config.until))
        return run_scoring(config, **kwargs)

    monkeypatch.setattr(window_module, "run_scoring", counted)
    now = START + 4 * HOUR + dt.timedelta(minutes=7)
    outcomes = {}
    for name, per_run in (("together", 5_000), ("alone", 1)):
        config = MonitorConfig(
            source=str(feed),
            out=str(tmp_path / name),
            scoring=ScoringSettings(model=TINY),
            images_per_scoring_run=per_run,
        )
        outcomes[name] = run_monitor(config, registry=registry, now=now).windows
    assert runs[0] == (START, START + 4 * HOUR)  # hour 2 is empty and planned: one run over all four
    assert len(runs) == 1 + 3
    together, alone = outcomes["together"], outcomes["alone"]
    assert [(w.window_start, w.status, w.scored, w.rejected) for w in together] == [
        (w.window_start, w.status, w.scored, w.rejected) for w in alone
    ]
    assert [w.status for w in together] == ["ok", "drift", "no_data", "ok"]
    assert together[0].rejected == 1
    for first, second in zip(together, alone, strict=True):
        if first.decision is not None:
            assert [t.label for t in first.fired] == [t.label for t in second.fired]
            # Batched with other windows' images, a score moves in its last bits only (the forward pass in chunks).
            ours, theirs = (
                sorted(zip(*w.scores.select(["uri", "gradnorm"]).to_pydict().values(), strict=True))
                for w in (first, second)
            )
            assert [uri for uri, _ in ours] == [uri for uri, _ in theirs]
            np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-6)
