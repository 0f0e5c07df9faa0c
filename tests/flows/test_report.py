"""The report of an OUT built by hand, table by table as the pipeline and the monitor write them: why each alerted
window alerted, its images captioned, the rejected files, one time format, and charts over every window."""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pyarrow as pa
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from flows.alerts import Alert, Outbox
from flows.monitor.decisions import decision_row, write_decision
from flows.monitor.window import WindowOutcome
from flows.report import ALERT_COLOUR, EMPTY_COLOUR, REJECTED_SHOWN, ReportTables, render_report, report_figures
from pipelines.records import (
    CORE_PROPERTY_COLUMNS,
    CORE_SCORE_COLUMNS,
    REJECTED,
    REJECTED_SCHEMA,
    measured_columns,
    scores_schema,
)
from pipelines.store import OutputStore
from pipelines.times import UNKNOWN_WINDOW, window_label
from pipelines.windows import WindowStatistics
from scoring import drift
from scoring.calibration import Calibration, CalibrationConfig, fit_tests
from scoring.references import score_reference

START = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
# 12:00 ok (decided before the monitor estimated accuracy), 13:00 no images, 14:00 drift, 15:00 ok.
OK, EMPTY, DRIFT, LAST = (START + index * HOUR for index in range(4))
SEGMENTS = ("dock", "yard")
COLUMNS = measured_columns(CORE_SCORE_COLUMNS, CORE_PROPERTY_COLUMNS)
MODEL = "resnet@1"
TESTS = ("ks", "beta_binomial")
REJECTED_ROWS = REJECTED_SHOWN + 7
ACCURACY = {
    "reference": 0.93,
    "atc": {"estimate": 0.712, "low": 0.65, "high": 0.77},
    "doc": {"estimate": 0.70, "low": 0.61, "high": 0.79},
    "confidence": 0.74,
    "reference_confidence": 0.95,
    "drop": {"estimate": 0.218, "low": 0.16, "high": 0.28},
}
UNLABELLED = {**ACCURACY, "reference": None, "atc": None, "doc": None}
SEQUENTIAL = {"statistic": 7.5, "limit": 5.0, "signalled": True, "chart": "msp/beta_binomial", "windows": 3}
SEVERITY = {"level": "page", "reasons": ["estimated accuracy fell 21.8 points", "msp drifted for 3 windows"]}


def _calibration() -> Calibration:
    rng = np.random.default_rng(0)
    references = {
        "msp": fit_tests(score_reference("msp", rng.uniform(0.6, 1.0, 400), 0.95, side="low"), TESTS),
        "energy": fit_tests(score_reference("energy", rng.normal(-8, 1, 400), 0.95, side="high"), TESTS),
    }
    return Calibration(MODEL, CalibrationConfig(), {"": references}, reference_images=400)


def _write_window(store: OutputStore, images: Path, start: dt.datetime, msp: np.ndarray) -> None:
    """One window's scores and windows tables, through the pipeline's own statistics."""
    rng = np.random.default_rng(int(start.timestamp()))
    rows = []
    for index, value in enumerate(msp):
        uri = images / f"{start:%H}-{index:03d}.jpg"
        Image.fromarray(np.full((40, 60, 3), int(255 * value), np.uint8)).save(uri)
        values = {name: float(rng.normal()) for name in COLUMNS}
        values |= {"msp": float(value), "energy": float(-8 - 4 * (1 - value) + rng.normal(0, 0.3))}
        rows.append(
            {
                "image_id": f"{start:%H}{index}",
                "uri": str(uri),
                "event_time": start + dt.timedelta(seconds=index),
                "segment": SEGMENTS[index % 2],
                "model_id": MODEL,
                **values,
                "pred": 1,
            }
        )
    label = window_label(start)
    scores = pa.Table.from_pylist(rows, schema=scores_schema(COLUMNS))
    store.write_partition("scores", label, scores, part="src")
    statistics = WindowStatistics(window=HOUR, columns=COLUMNS, model_id=MODEL)
    windows = statistics(label, {"scores": scores, REJECTED: REJECTED_SCHEMA.empty_table()})
    store.write_partition("windows", label, windows, part="src")


def _decide(store: OutputStore, outcome: WindowOutcome, **extra: dict) -> None:
    row = decision_row(outcome, model_id=MODEL, threshold_version="3", mlflow_run_id="")
    row["decision"] = json.dumps({**json.loads(row["decision"]), **extra})
    write_decision(store, outcome, row, part="src")


def _drift_decision() -> drift.WindowDecision:
    tests = [
        drift.TestRecord("ks", "msp", "dock", 0.61, 3e-12, 0.0025, True, "msp fell 2.4 IQR below the reference median"),
        drift.TestRecord(
            "beta_binomial", "msp", "dock", 0.58, 4e-9, 0.0033, True, "58% of images outside msp's bounds"
        ),
        drift.TestRecord("ks", "energy", "dock", 0.12, 0.4, 0.01, False),
    ]
    effects = [
        drift.EffectSize(
            "msp", "dock", wasserstein=1.87, psi=2.31, median_shift=-2.4, ood_rate=0.58, expected_ood_rate=0.05
        ),
        drift.EffectSize(
            "energy", "dock", wasserstein=0.2, psi=0.04, median_shift=0.1, ood_rate=0.06, expected_ood_rate=0.05
        ),
    ]
    return drift.WindowDecision("drift", 0.01, {"dock": 30, "yard": 30}, tests, effects)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> OutputStore:
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    images.mkdir()
    store = OutputStore(str(root / "out"))
    rng = np.random.default_rng(1)
    healthy = drift.WindowDecision(
        "ok", 0.01, {"dock": 30, "yard": 30}, [drift.TestRecord("ks", "msp", "dock", 0.1, 0.5, 0.01, False)]
    )
    _write_window(store, images, OK, rng.uniform(0.6, 1.0, 60))
    _decide(store, WindowOutcome(OK, OK + HOUR, "ok", healthy, scored=60))
    _decide(store, WindowOutcome(EMPTY, EMPTY + HOUR, "no_data"))
    _write_window(store, images, DRIFT, np.r_[rng.uniform(0.05, 0.3, 30), rng.uniform(0.6, 1.0, 30)])
    _decide(
        store,
        WindowOutcome(DRIFT, DRIFT + HOUR, "drift", _drift_decision(), scored=60, rejected=REJECTED_ROWS),
        accuracy={"dock": ACCURACY},
        sequential={"dock": SEQUENTIAL},
        severity={"dock": SEVERITY},
    )
    _write_window(store, images, LAST, rng.uniform(0.6, 1.0, 60))
    later = {**ACCURACY, "atc": {"estimate": 0.9, "low": 0.86, "high": 0.94}, "doc": None}
    _decide(
        store,
        WindowOutcome(LAST, LAST + HOUR, "ok", healthy, scored=60),
        # yard's calibration had no labels: only its fall in confidence is estimated, and shown.
        accuracy={"dock": later, "yard": {**UNLABELLED, "drop": {"estimate": 0.05, "low": 0.01, "high": 0.09}}},
        sequential={"dock": {**SEQUENTIAL, "statistic": 1.2, "signalled": False, "windows": 4}},
    )
    rejected = [
        {
            "uri": f"{images}/broken-{index:02d}.jpg",
            "event_time": DRIFT + dt.timedelta(minutes=index % 60),
            "segment": "dock",
            "stage": "decode",
            "reason": "truncated",
            "error": f"broken-{index:02d}.jpg is truncated: re-upload it",
        }
        for index in range(REJECTED_ROWS)
    ]
    store.write_partition(
        REJECTED, window_label(DRIFT), pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), part="src"
    )
    lost = [
        {
            "uri": "s3://feed/lost.jpg",
            "event_time": None,
            "segment": "",
            "stage": "read",
            "reason": "not_found",
            "error": "s3://feed/lost.jpg was listed and then not found",
        }
    ]
    store.write_partition(REJECTED, UNKNOWN_WINDOW, pa.Table.from_pylist(lost, schema=REJECTED_SCHEMA), part="src")
    Outbox(store).add(
        Alert(
            "drift",
            DRIFT,
            DRIFT + HOUR,
            "dock",
            MODEL,
            "3",
            summary=f"drift in segment 'dock', window {window_label(DRIFT)}: dock/msp/ks",
        )
    )
    return store


@pytest.fixture(scope="module")
def page(out: OutputStore) -> str:
    return render_report(out, _calibration())[0]


def _between(page: str, start: str, end: str) -> str:
    part = page[page.index(start) :]
    return part[: part.index(end)]


def _cells(table: str) -> list[list[str]]:
    """The cells of each row of a table's body."""
    body = table[table.index("<tbody>") :]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def _visible_text(page: str) -> str:
    body = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_each_fired_test_with_its_statistic_p_value_holm_threshold_and_effect_size(page: str) -> None:
    table = _between(page, '<table class="fired-tests">', "</table>")
    cells = _cells(table)
    # Most significant first; the test that did not fire is not listed.
    assert [row[:3] for row in cells] == [["dock", "msp", "ks"], ["dock", "msp", "beta_binomial"]]
    assert cells[0][3:10] == ["0.61", "3e-12", "0.0025", "-2.40", "1.87", "2.31", "58.0% (5.0%)"]
    assert cells[1][5] == "0.0033"
    for header in (
        "statistic",
        "p-value",
        "Holm threshold",
        "median shift (IQR)",
        "Wasserstein (SD)",
        "PSI",
        "OOD rate (expected)",
    ):
        assert f"<th>{header}</th>" in table
    assert table.count("<tbody>") == 1
    assert page.count('<table class="fired-tests">') == 1


def test_accuracy_sequential_and_severity_shown_where_the_decision_has_them(page: str) -> None:
    alerted = _between(page, '<section class="alerted">', "</section>")
    assert "page</span> dock: estimated accuracy fell 21.8 points; msp drifted for 3 windows" in alerted
    assert "dock: ATC 71.2% [65.0%, 77.0%], drop 21.8% [16.0%, 28.0%] (reference 93.0%)" in alerted
    assert "sequential msp/beta_binomial (dock): statistic 7.5 against limit 5 over 3 windows, signalled" in alerted
    table = _between(page, '<table id="windows">', "</table>")
    cells = _cells(table)
    statuses = ((OK, "ok"), (EMPTY, "no_data"), (DRIFT, "drift"), (LAST, "ok"))
    assert [row[:2] for row in cells] == [[f"{when:%Y-%m-%d %H}:00 UTC", status] for when, status in statuses]
    headers = re.findall(r"<th>(.*?)</th>", table)
    severity, accuracy = headers.index("severity"), headers.index("estimated accuracy")
    # The decision of 12:00 was written before the monitor estimated accuracy: "-", not an error.
    assert [row[severity] for row in cells] == ["-", "-", '<span class="sev-page">page</span> dock', "-"]
    assert [row[accuracy] for row in cells] == [
        "-", "-", "dock: ATC 71.2% [65.0%, 77.0%], drop 21.8% [16.0%, 28.0%] (reference 93.0%)",
        "dock: ATC 90.0% [86.0%, 94.0%], drop 21.8% [16.0%, 28.0%] (reference 93.0%)<br>yard: drop 5.0% [1.0%, 9.0%]",
    ]  # fmt: skip


def test_thumbnails_captioned_with_file_ranked_value_and_bounds(page: str, out: OutputStore) -> None:
    alerted = _between(page, '<section class="alerted">', "</section>")
    assert "<h4>ranked on msp</h4>" in alerted
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", alerted)
    assert len(captions) == 8
    threshold = _calibration().reference("msp").lower
    scores = {Path(row["uri"]).name: row["msp"] for row in out.read_table("scores").to_pylist()}
    lowest = sorted(scores.items(), key=lambda item: item[1])[:8]
    assert captions == [
        f"{name}<br>msp = {value:.4g}<br>out of distribution below {threshold:.4g}" for name, value in lowest
    ]
    assert alerted.count('src="data:image/jpeg;base64,') == 8


def test_rejected_files_listed_with_window_stage_reason_and_error_capped(page: str) -> None:
    section = page[page.index("<h2>Rejected files</h2>") :]
    assert (
        f"{REJECTED_ROWS + 1} files listed but not scored: {REJECTED_ROWS} decode/truncated, 1 read/not_found"
        in section
    )
    table = _between(section, '<table id="rejected">', "</table>")
    rows = _cells(table)
    assert len(rows) == REJECTED_SHOWN
    first = rows[0]
    assert first[0] == "2026-11-26 14:00 UTC"
    assert first[1] == "dock"
    assert first[2].endswith("broken-00.jpg")
    assert first[3:] == [
        "decode",
        "truncated",
        "broken-00.jpg is truncated: re-upload it",
    ]
    assert f"and {REJECTED_ROWS + 1 - REJECTED_SHOWN} more, every one in OUT/rejected" in section


def test_one_time_format_in_the_visible_text(page: str) -> None:
    text = _visible_text(page)
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d[:-]\d\d", text)  # neither ISO times nor partition labels
    alerts = _between(page, '<table id="alerts">', "</table>")
    assert "<td>2026-11-26 14:00 UTC</td>" in alerts
    assert "drift in segment &#x27;dock&#x27;, window 2026-11-26 14:00 UTC: dock/msp/ks" in alerts
    assert "2026-11-26 12:00 UTC to 2026-11-26 16:00 UTC" in text
    times = re.findall(r"\d{4}-\d\d-\d\d[ T][\d:.-]+(?: UTC|Z|\+00:00)?", text)
    assert times
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", when) for when in times)


def _spans(axis, colour: str) -> list[tuple[float, float]]:
    return sorted(
        (round(patch.get_x(), 6), round(patch.get_x() + patch.get_width(), 6))
        for patch in axis.patches
        if to_rgb(patch.get_facecolor()) == to_rgb(colour)
    )


def _overlaps(figure) -> list[tuple[str, str]]:
    """Pairs of titles, axis labels and tick labels whose drawn boxes overlap."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = [figure.texts[0]] if figure.texts else []  # the suptitle
    for axis in (axis for axis in figure.axes if axis.get_visible()):
        texts += [axis.title, axis.xaxis.label, axis.yaxis.label]
        for ticks in (axis.xaxis, axis.yaxis):
            low, high = sorted(ticks.get_view_interval())
            # The locator also places ticks just outside the view, which are never drawn.
            texts += [tick.label1 for tick in ticks.get_major_ticks() if low - 1e-9 <= tick.get_loc() <= high + 1e-9]
    boxes = [
        (text.get_text(), text.get_window_extent(renderer)) for text in texts if text.get_visible() and text.get_text()
    ]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def test_every_chart_over_time_shades_drift_keeps_the_empty_window_and_draws_the_last_step(out: OutputStore) -> None:
    figures = report_figures(ReportTables.read(out), _calibration())
    assert set(figures) == {"quantile_bands.png", "ood_rates.png", "segments.png", "accuracy.png", "sequential.png"}
    drift = (round(mdates.date2num(DRIFT), 6), round(mdates.date2num(DRIFT + HOUR), 6))
    empty = (round(mdates.date2num(EMPTY), 6), round(mdates.date2num(EMPTY + HOUR), 6))
    for name, figure in figures.items():
        assert not _overlaps(figure), name
        for axis in (axis for axis in figure.axes if axis.get_visible()):
            assert _spans(axis, ALERT_COLOUR) == [drift], name  # shaded over the window, not a line at its start
            assert _spans(axis, EMPTY_COLOUR) == [empty], name
            assert axis.get_xlim() == (mdates.date2num(OK), mdates.date2num(LAST + HOUR)), name
            assert axis.xaxis.get_major_formatter().format_data(mdates.date2num(DRIFT)) == "2026-11-26 14:00 UTC"
            # The lines over time (a horizontal reference line spans the axes, not windows).
            for line in (line for line in axis.get_lines() if isinstance(line.get_xdata()[0], dt.datetime)):
                if line.get_label() == "DOC estimate":
                    continue  # the last window has no DOC estimate, so that line ends a window earlier
                x, y = mdates.date2num(line.get_xdata()), np.asarray(line.get_ydata(), dtype=float)
                drawn = x[np.isfinite(y)]
                assert drawn.max() == pytest.approx(mdates.date2num(LAST + HOUR)), name  # the last window's step
                # Nothing is drawn inside the empty window: the line breaks there.
                assert not ((drawn > empty[0] + 1e-6) & (drawn < empty[1] - 1e-6)).any(), name
        figure.clear()


def test_decisions_without_the_new_keys_and_an_empty_out_still_render(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    page, charts = render_report(store)
    assert "No rejected files." in page
    assert "No drift alerts." in page
    assert charts == {}
    _write_window(store, tmp_path, DRIFT, np.linspace(0.05, 0.9, 60))
    _decide(store, WindowOutcome(DRIFT, DRIFT + HOUR, "drift", _drift_decision(), scored=60))
    page, charts = render_report(store)
    assert '<table class="fired-tests">' in page
    assert "bounds not loaded (no approved calibration)" in page
    assert set(charts) == {"quantile_bands.png", "segments.png"}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium from the OS packages: apt-get install chromium")
def test_report_renders_in_headless_chromium(page: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(page)
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for chart in ("quantile_bands", "ood_rates", "segments", "accuracy", "sequential"):
        assert f'<figure class="chart" id="{chart}"><img alt="{chart}.png" src="data:image/png;base64,' in dom
    assert '<table class="fired-tests">' in dom
    assert '<table id="rejected">' in dom
    assert "<figcaption>" in dom
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [_chromium(), *flags, "--window-size=1200,3000", f"--screenshot={screenshot}", path.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.std() > 20  # charts and thumbnails drawn, not a blank page
