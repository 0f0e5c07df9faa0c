"""Checking thresholds against OUT's production windows: real pipeline, a real MLflow server on loopback."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.calibrate import calibrate_reference
from flows.reference_check import STATE_FILE, check_against, check_on_start
from flows.registry import ThresholdRegistry
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.store import OutputStore
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig

TINY = "tests.scoring.tiny_models:build"
HOUR = dt.timedelta(hours=1)
START = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
CONFIG = CalibrationConfig(min_window=20, check_windows=100, check_window_sizes=(20, 40))
PERIOD = {"since": START, "until": START + 3 * HOUR}


def _noise(path: Path, seed: int, when: dt.datetime, *, high: int = 256) -> None:
    pixels = np.random.default_rng(seed).integers(0, high, size=(48, 64, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    os.utime(path, (when.timestamp(), when.timestamp()))


def _production(root: Path, name: str, *, high: int, hours: int = 3, per_window: int = 40) -> OutputStore:
    feed = root / f"feed-{name}"
    for hour in range(hours):
        for index in range(per_window):
            when = START + hour * HOUR + dt.timedelta(minutes=index)
            _noise(feed / f"h{hour}-{index}.png", 5000 + 100 * hour + index, when, high=high)
    out = root / f"out-{name}"
    run_scoring(ScoringConfig(source=str(feed), out=str(out), scoring=ScoringSettings(model=TINY)))
    return OutputStore(str(out))


@pytest.fixture(scope="module")
def setup(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("reference-check")
    registry = ThresholdRegistry(mlflow_server)
    for index in range(120):
        _noise(root / "curated" / f"{index}.png", index, START - 48 * HOUR)
    version, calibration = calibrate_reference(
        str(root / "curated"), registry=registry, scoring=ScoringSettings(model=TINY), config=CONFIG
    )
    # Production of the same kind, and production much darker than the curated reference.
    stores = {"healthy": _production(root, "healthy", high=256), "dark": _production(root, "dark", high=110)}
    return root, registry, version, calibration, stores


def test_a_reference_like_production_is_representative(setup) -> None:
    _, registry, version, _, stores = setup
    record = check_against(stores["healthy"], registry, version, **PERIOD)
    assert record.representative, record.summary()
    assert record.images == 120
    assert record.fix is None
    # Windows only 'gradwatch score' wrote have no fitted state: ViM and features are not compared.
    assert {"vim", "features"} <= set(record.unchecked)
    tags = registry.get(version.name, version.version).tags
    assert tags["reference_check"] == "representative"
    assert tags["reference_check_detail"].startswith("representative: pages")
    assert tags["reference_check_against"] == f"{stores['healthy'].out} in [2026-11-26T10:00:00Z, 2026-11-26T13:00:00Z)"


def test_a_reference_unlike_production_is_not_and_says_what_moved(setup) -> None:
    _, registry, version, _, stores = setup
    record = check_against(stores["dark"], registry, version, **PERIOD)
    assert not record.representative
    assert max(rate.ci_low for rate in record.page_rates) > 2 * CONFIG.alpha
    shifts = {shift.name: shift for shift in record.values}
    assert len(record.most_off) == 5
    assert all(shifts[name].ks_distance > 0.9 for name in record.most_off)
    brightness = shifts["brightness"]
    assert brightness.ks_distance > 0.9
    assert brightness.median_shift < 0
    assert record.fix == (
        f"calibrate from production: gradwatch calibrate --from-out {stores['dark'].out} "
        "--since 2026-11-26T10:00:00Z --until 2026-11-26T13:00:00Z"
    )
    tags = registry.get(version.name, version.version).tags
    assert tags["reference_check"] == "not_representative"
    assert f"{record.most_off[0]} (KS" in tags["reference_check_detail"]


def _gradwatch(*args: str, uri: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    assert script, "the gradwatch console script is installed with the project"
    env = {**os.environ, "GRADWATCH_MLFLOW_URI": uri}
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=300, env=env)


def test_the_command_line_exits_3_when_not_representative(setup, mlflow_server: str) -> None:
    _, _, version, _, stores = setup
    # The default period: the 24 hours up to the end of OUT's latest window, which holds all three.
    dark = _gradwatch("thresholds", "check", version.version, "--against", stores["dark"].out, "--model", TINY,
                      uri=mlflow_server)  # fmt: skip
    assert dark.returncode == 3, dark.stderr
    assert f"v{version.version}: the reference is NOT representative of production" in dark.stdout
    assert "120 healthy-looking images" in dark.stdout
    assert "[2026-11-25T13:00:00Z, 2026-11-26T13:00:00Z)" in dark.stdout
    assert "pages " in dark.stdout
    assert "95% CI" in dark.stdout
    assert "KS 1.00" in dark.stdout.split("most off:")[1]
    assert "IQR" in dark.stdout
    assert f"fix: calibrate from production: gradwatch calibrate --from-out {stores['dark'].out}" in dark.stdout
    period = ("--since", "2026-11-26T10:00:00Z", "--until", "2026-11-26T13:00:00Z")
    healthy = _gradwatch("thresholds", "check", version.version, "--against", stores["healthy"].out, "--model", TINY,
                         *period, uri=mlflow_server)  # fmt: skip
    assert healthy.returncode == 0, healthy.stderr
    assert "the reference is representative of production" in healthy.stdout
    assert "fix:" not in healthy.stdout


def test_check_on_start_runs_once_per_version_and_waits_for_enough_images(setup, caplog) -> None:
    root, registry, version, calibration, stores = setup
    now = START + 3 * HOUR + dt.timedelta(minutes=7)
    store = stores["dark"]
    record = check_on_start(store, registry, calibration, version, now)
    assert record is not None
    assert not record.representative
    assert "do not represent production" in caplog.text
    assert check_on_start(store, registry, calibration, version, now) is None
    state = json.loads((Path(store.out) / STATE_FILE).read_text())
    assert state[f"{version.name}/{version.version}"]["representative"] is False
    # A new version is checked again, against the same OUT.
    again = registry.propose(calibration, model_name="build", params={}, artifacts={}, run_name="recalibrated")
    assert check_on_start(store, registry, calibration, again, now) is not None
    assert check_on_start(store, registry, calibration, again, now) is None
    # Fewer than 2 * min_window images scored yet: nothing is checked, nor remembered.
    young = _production(root, "young", high=256, hours=1, per_window=30)
    assert check_on_start(young, registry, calibration, version, START + HOUR) is None
    assert not (Path(young.out) / STATE_FILE).exists()
