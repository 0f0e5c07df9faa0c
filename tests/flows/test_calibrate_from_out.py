"""Calibrating on windows already scored into OUT: real pipeline, real monitor, a real MLflow server on loopback."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.calibrate import calibrate_from_out, calibrate_reference
from flows.monitor import MonitorConfig, run_monitor
from flows.registry import ThresholdRegistry
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.store import OutputStore
from scoring import GradwatchError, ScoringSettings
from scoring.calibration import CalibrationConfig

TINY = "tests.scoring.tiny_models:build"
HOUR = dt.timedelta(hours=1)
START = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
CONFIG = CalibrationConfig(min_window=20, check_windows=50, check_window_sizes=(20,))
PER_WINDOW = 40


def _noise(path: Path, seed: int, when: dt.datetime, *, high: int = 256) -> None:
    pixels = np.random.default_rng(seed).integers(0, high, size=(48, 64, 3), dtype=np.uint8)
    _save(Image.fromarray(pixels), path, when)


def _flat(path: Path, seed: int, when: dt.datetime) -> None:
    colour = tuple(int(c) for c in np.random.default_rng(seed).integers(0, 60, 3))  # a lens cap
    _save(Image.new("RGB", (64, 48), colour), path, when)


def _save(image: Image.Image, path: Path, when: dt.datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    os.utime(path, (when.timestamp(), when.timestamp()))


def _feed(folder: Path, hours: range, make=_noise, seed: int = 0) -> Path:
    for hour in hours:
        for index in range(PER_WINDOW):
            when = START + hour * HOUR + dt.timedelta(minutes=index)
            make(folder / f"h{hour}-{index}.png", seed + 100 * hour + index, when)
    return folder


def _approve(registry: ThresholdRegistry, folder: Path, seed: int):
    for index in range(120):
        _noise(folder / f"{index}.png", seed + index, START - 48 * HOUR)
    version, calibration = calibrate_reference(
        str(folder), registry=registry, scoring=ScoringSettings(model=TINY), config=CONFIG
    )
    registry.approve(version.name, version.version, by="test")
    return version, calibration


def _monitor(feed: Path, out: Path, registry: ThresholdRegistry, hours: int) -> None:
    config = MonitorConfig(source=str(feed), out=str(out), scoring=ScoringSettings(model=TINY), since=START)
    run_monitor(config, registry=registry, now=START + hours * HOUR + dt.timedelta(minutes=7))


@pytest.fixture
def registry(mlflow_server: str) -> ThresholdRegistry:
    return ThresholdRegistry(mlflow_server)


def test_calibrates_on_monitored_windows_without_scoring_them_again(tmp_path: Path, registry) -> None:
    approved, production = _approve(registry, tmp_path / "curated", seed=1000)
    feed = _feed(tmp_path / "feed", range(2))
    _feed(feed, range(2, 3), make=_flat)  # a lens cap: drift, and tiny files the data-quality gate reports
    _monitor(feed, tmp_path / "out", registry, hours=3)
    shutil.rmtree(feed)  # nothing is read again: the reference is what OUT holds

    version, calibration = calibrate_from_out(
        str(tmp_path / "out"), since=START, until=START + 3 * HOUR, registry=registry,
        scoring=ScoringSettings(model=TINY), config=CONFIG,
    )  # fmt: skip
    assert calibration.reference_images == 3 * PER_WINDOW
    assert calibration.model_id == production.model_id
    # The windows' ViM and features were computed with the approved version's fitted state: the new one keeps it.
    assert calibration.fitted_scores == production.fitted_scores
    assert {"vim", "features", "pred"} <= set(calibration.scores)
    assert calibration.scoring == production.scoring
    params = registry.client.get_run(version.run_id).data.params
    assert params["reference_source"] == str(tmp_path / "out")
    assert params["reference_since"] == "2026-11-26T10:00:00Z"
    assert params["reference_until"] == "2026-11-26T13:00:00Z"
    assert params["reference_windows"] == "3"
    assert params["reference_images"] == str(3 * PER_WINDOW)
    assert params["reference_segments"] == "-"
    assert params["fitted_from_version"] == approved.version
    assert params["precision"] == "fp32"
    assert len(params["reference_sha256"]) == 64
    assert "runner" not in params  # nothing ran on a pipeline
    recorded = registry.calibration(version)
    assert recorded.fitted_scores == production.fitted_scores
    flagged = [warning for warning in recorded.warnings if warning.startswith("1 window(s)")]
    assert len(flagged) == 2
    assert "decided as drift (2026-11-26T12:00:00Z)" in flagged[0]
    assert "failed data-quality gates (2026-11-26T12:00:00Z)" in flagged[1]
    artifacts = {item.path for item in registry.client.list_artifacts(version.run_id, "reference")}
    assert artifacts == {"reference/scores.parquet"}


def test_refuses_a_period_of_versions_with_different_fitted_states(tmp_path: Path, registry) -> None:
    first, _ = _approve(registry, tmp_path / "curated-1", seed=2000)
    feed = _feed(tmp_path / "feed", range(2))
    _monitor(feed, tmp_path / "out", registry, hours=2)
    second, _ = _approve(registry, tmp_path / "curated-2", seed=3000)  # a new reference: ViM fitted anew
    _feed(feed, range(2, 3))
    _monitor(feed, tmp_path / "out", registry, hours=3)

    with pytest.raises(GradwatchError, match="different fitted states") as refused:
        calibrate_from_out(
            str(tmp_path / "out"), since=START, until=START + 3 * HOUR, registry=registry,
            scoring=ScoringSettings(model=TINY), config=CONFIG,
        )  # fmt: skip
    message = str(refused.value)
    assert f"v{first.version}: 2026-11-26T10:00:00Z..2026-11-26T11:00:00Z (2 windows)" in message
    assert f"v{second.version}: 2026-11-26T12:00:00Z" in message
    assert "narrower --since/--until" in message
    # One version's windows alone calibrate, with that version's fitted state.
    version, _ = calibrate_from_out(
        str(tmp_path / "out"), since=START, until=START + 2 * HOUR, registry=registry,
        scoring=ScoringSettings(model=TINY), config=CONFIG,
    )  # fmt: skip
    assert registry.client.get_run(version.run_id).data.params["fitted_from_version"] == first.version


def _score(feed: Path, out: Path, model: str = TINY) -> None:
    run_scoring(ScoringConfig(source=str(feed), out=str(out), scoring=ScoringSettings(model=model)))


def test_windows_never_decided_calibrate_on_what_needs_no_fitted_state(tmp_path: Path, registry) -> None:
    _score(_feed(tmp_path / "feed", range(2)), tmp_path / "out")
    version, calibration = calibrate_from_out(
        str(tmp_path / "out"), since=START, until=START + 2 * HOUR, registry=registry,
        scoring=ScoringSettings(model=TINY), config=CONFIG,
    )  # fmt: skip
    assert calibration.fitted_scores == {}
    assert "vim" not in calibration.scores
    assert "features" not in calibration.scores
    assert {"gradnorm", "brightness", "pred"} <= set(calibration.scores)
    assert any("2 window(s)" in warning and "never decided" in warning for warning in calibration.warnings)
    assert registry.client.get_run(version.run_id).data.params["fitted_from_version"] == "-"


def test_refuses_windows_of_different_models_and_too_few_images(tmp_path: Path, registry) -> None:
    _score(_feed(tmp_path / "feed-a", range(1)), tmp_path / "out")
    _score(
        _feed(tmp_path / "feed-b", range(1, 2)), tmp_path / "out", model="tests.scoring.tiny_models:build_near_uniform"
    )
    kwargs = {"registry": registry, "scoring": ScoringSettings(model=TINY), "config": CONFIG}
    with pytest.raises(GradwatchError, match="scored by different models") as refused:
        calibrate_from_out(str(tmp_path / "out"), since=START, until=START + 2 * HOUR, **kwargs)
    assert "build_near_uniform@" in str(refused.value)
    assert "narrower --since/--until" in str(refused.value)
    few = CalibrationConfig(min_window=25, check_windows=50, check_window_sizes=(25,))
    with pytest.raises(GradwatchError, match=r"40 reference images are too few.*widen --since/--until"):
        calibrate_from_out(str(tmp_path / "out"), since=START, until=START + HOUR, **{**kwargs, "config": few})
    with pytest.raises(GradwatchError, match="no scored windows in"):
        calibrate_from_out(str(tmp_path / "out"), since=START - 5 * HOUR, until=START, **kwargs)


def _gradwatch(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    assert script, "the gradwatch console script is installed with the project"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=300)


def test_the_command_line_calibrates_from_out(tmp_path: Path, mlflow_server: str, monkeypatch) -> None:
    monkeypatch.setenv("GRADWATCH_MLFLOW_URI", mlflow_server)
    _score(_feed(tmp_path / "feed", range(2)), tmp_path / "out")
    period = ("--since", "2026-11-26T10:00:00Z", "--until", "2026-11-26T12:00:00Z")
    result = _gradwatch(
        "calibrate", "--from-out", str(tmp_path / "out"), *period, "--model", TINY, "--min-window", "20"
    )
    assert result.returncode == 0, result.stderr
    assert "proposed gradwatch-threshold-build version" in result.stdout
    assert f"{2 * PER_WINDOW} reference images" in result.stdout
    assert "warning: 2 window(s)" in result.stderr

    both = _gradwatch("calibrate", str(tmp_path / "feed"), "--from-out", str(tmp_path / "out"), *period)
    assert both.returncode == 2
    assert "exactly one of them" in both.stderr
    neither = _gradwatch("calibrate")
    assert neither.returncode == 2
    assert "exactly one of them" in neither.stderr
    no_period = _gradwatch("calibrate", "--from-out", str(tmp_path / "out"), "--since", "2026-11-26T10:00:00Z")
    assert no_period.returncode == 2
    assert "--from-out needs --since and --until" in no_period.stderr


def test_labels_give_the_reference_accuracy_and_bad_ones_are_refused(tmp_path: Path, registry) -> None:
    feed = _feed(tmp_path / "feed", range(2))
    _score(feed, tmp_path / "out")
    rows = OutputStore(str(tmp_path / "out")).read_table("scores").to_pylist()
    pred = {Path(row["uri"]).name: row["pred"] for row in rows}
    # 60 right and 20 wrong, by path relative to the CSV's folder.
    lines = [f"{name},{pred[name] if index < 60 else (pred[name] + 1) % 5}" for index, name in enumerate(sorted(pred))]
    (feed / "labels.csv").write_text("file,class_index\n" + "\n".join(lines) + "\n")
    kwargs = {"since": START, "until": START + 2 * HOUR, "registry": registry, "scoring": ScoringSettings(model=TINY)}
    version, _ = calibrate_from_out(str(tmp_path / "out"), config=CONFIG, labels=str(feed / "labels.csv"), **kwargs)
    params = registry.client.get_run(version.run_id).data.params
    assert (params["labelled_images"], params["reference_accuracy"]) == ("80", "0.75")
    # Elsewhere, a CSV names images by file name; a name rows share (h0-0.png, three times here) names none.
    elsewhere = tmp_path / "labels" / "labels.csv"
    elsewhere.parent.mkdir()
    elsewhere.write_text("file,class_index\na/h0-0.png,0\nb/h0-0.png,1\n" + "\n".join(lines) + "\n")
    version, _ = calibrate_from_out(str(tmp_path / "out"), config=CONFIG, labels=str(elsewhere), **kwargs)
    assert registry.client.get_run(version.run_id).data.params["labelled_images"] == "79"

    bad = tmp_path / "bad.csv"
    for text, message in (
        ("name,class\nh0-0.png,1\n", r"lacks the column\(s\) \['class_index', 'file'\]"),
        ("file,class_index\nh0-0.png,tench\n", "line 2: class_index 'tench' of 'h0-0.png' is not an integer"),
        ("file,class_index\nother.png,1\n", "names none of the 80 reference images"),
    ):
        bad.write_text(text)
        with pytest.raises(GradwatchError, match=message) as refused:
            calibrate_from_out(str(tmp_path / "out"), config=CONFIG, labels=str(bad), **kwargs)
        assert str(bad) in str(refused.value)
