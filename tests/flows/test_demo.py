"""The demo's whole loop at reduced size, and its report in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.demo import DemoConfig, DemoResult, run_demo, summary_lines
from flows.registry import ThresholdRegistry
from flows.report import write_report

DRIFT_HOUR = 3


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    workdir = tmp_path_factory.mktemp("demo")
    config = DemoConfig(hours=6, images_per_hour=30, reference_images=150, min_window=20, drift_hour=DRIFT_HOUR)
    planned, decided = [], []
    result = run_demo(workdir, config, say=lambda _: None, on_planned=planned.extend, on_window=decided.append)
    # What the demo's progress bar shows: the day's windows planned, then each as it is decided.
    assert [window.window_start for window in decided] == planned == [w.window_start for w in result.report.windows]
    assert len(planned) == config.hours
    return result


def test_demo_alerts_at_the_injected_hour(small_demo: DemoResult) -> None:
    statuses = [(window.window_start.hour, window.status) for window in small_demo.report.windows]
    assert next(hour for hour, status in statuses if status == "drift") in (DRIFT_HOUR, DRIFT_HOUR + 1)
    assert all(status == "ok" for hour, status in statuses if hour < DRIFT_HOUR)
    kinds = [(alert["kind"], int(alert["window"]["start"][11:13])) for alert in small_demo.alerts]
    assert kinds[0] in (("drift", DRIFT_HOUR), ("drift", DRIFT_HOUR + 1))
    assert {kind for kind, _ in kinds} == {"drift"}  # one episode, no false alarm before it


def test_the_summary_names_every_output_under_the_workdir_and_how_to_open_the_calibration_run(
    small_demo: DemoResult,
) -> None:
    registry = ThresholdRegistry(f"sqlite:///{(small_demo.workdir / 'mlflow.db').resolve()}")
    report = Path(
        write_report(str(small_demo.workdir / "out"), str(small_demo.workdir / "report.html"), registry=registry)
    )
    lines = summary_lines(small_demo, DemoConfig(drift_hour=DRIFT_HOUR), registry, report)
    assert len([line for line in lines if re.match(r"    \d\d:00  ", line)]) == len(small_demo.report.windows) + len(
        small_demo.alerts
    )
    workdir = str(small_demo.workdir.resolve())
    for label in ("Parquet outputs:", "report:", "alerts:"):
        assert workdir in next(line for line in lines if line.startswith(label)), label
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir}/mlflow.db --port 5000" in "\n".join(lines)
    run_line = next(line for line in lines if "the calibration run:" in line)
    assert run_line.endswith("?workflowType=machine_learning")
    assert run_line.split(": ", 1)[1].startswith("http://127.0.0.1:5000/#/experiments/")
    # The check counts the injected drift's windows, so the demo's own reference fails it: the summary says why.
    check = small_demo.report.reference_check
    explained = any(line.startswith("reference check: not representative, as expected here") for line in lines)
    assert explained is (check is not None and not check.representative)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium from the OS packages: apt-get install chromium")
def test_report_renders_in_headless_chromium(small_demo: DemoResult, tmp_path: Path) -> None:
    registry = ThresholdRegistry(f"sqlite:///{(small_demo.workdir / 'mlflow.db').resolve()}")
    page = Path(write_report(str(small_demo.workdir / "out"), str(tmp_path / "report.html"), registry=registry))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for chart in ("quantile_bands", "ood_rates", "segments"):
        assert re.search(rf'<figure class="chart" id="{chart}"><img alt="{chart}.png" src="data:image/png;base64,', dom)
    alerts = dom[dom.index('<table id="alerts">') :]
    alerts = alerts[: alerts.index("</table>")]
    assert alerts.count('<tr class="drift">') == len(small_demo.alerts)
    table = dom[dom.index('<table id="windows">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr") == 1 + len(small_demo.report.windows)
    assert table.count('class="drift"') == sum(w.is_drift for w in small_demo.report.windows)
    assert '<div class="strip">' in dom
    assert 'src="data:image/jpeg;base64,' in dom

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [_chromium(), *flags, "--window-size=1200,2400", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.std() > 20  # charts drawn, not a blank page

    run_id = small_demo.report.mlflow_run_id
    logged = {item.path for item in registry.client.list_artifacts(run_id, "report")}
    assert {"report/quantile_bands.png", "report/ood_rates.png"} <= logged


def test_demo_feed_from_the_users_own_images(tmp_path: Path) -> None:
    from flows.demo import build_feed

    own = tmp_path / "own"
    own.mkdir()
    for index in range(3):
        Image.fromarray(np.full((90, 120, 3), 60 * index, dtype=np.uint8)).save(own / f"{index}.png")
    config = DemoConfig(hours=2, images_per_hour=10, reference_images=12, drift_hour=1)
    reference, manifest = build_feed(tmp_path / "demo", config, source=own)
    assert len(list(reference.glob("*.jpg"))) == 12
    rows = manifest.read_text().splitlines()[1:]
    assert len(rows) == 20
    assert sum("healthy" in row for row in rows) == 10 + 6  # hour 1 has 40% drifted
    with pytest.raises(ValueError, match="holds no images"):
        build_feed(tmp_path / "empty", config, source=tmp_path / "nothing-here")
