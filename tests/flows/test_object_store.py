"""SOURCE and OUT both on s3://, end to end, against a real S3-protocol server on loopback (moto's) through s3fs:
calibrate, approve, monitor with a webhook, re-run, a late image, the report. Nothing may land on local disk."""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import s3fs
from PIL import Image

from flows.alerts import SECRET_ENV
from flows.calibrate import calibrate_reference
from flows.monitor import MonitorConfig, run_monitor
from flows.registry import ThresholdRegistry
from flows.report import write_report
from pipelines.store import OutputStore
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig
from tests.flows.receiver import Receiver
from tests.flows.test_monitor import HOUR, START, TINY

NOW = START + 3 * HOUR + dt.timedelta(minutes=5)


def _png(seed: int, *, flat: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if flat:  # a lens cap: dark, flat frames
        pixels = np.full((48, 64, 3), rng.integers(0, 60, 3), np.uint8)
    else:
        pixels = rng.integers(0, 256, (48, 64, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_manifest(fs: s3fs.S3FileSystem, bucket: str, rows: list[tuple[str, dt.datetime]]) -> None:
    lines = ["uri,event_time,segment", *(f"{uri},{when.isoformat()},dock" for uri, when in rows)]
    fs.pipe(f"{bucket}/feed.csv", ("\n".join(lines) + "\n").encode())


def test_calibrate_monitor_rerun_and_report_on_s3(s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a path mistaken for a local one would land
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    fs = s3fs.S3FileSystem()
    bucket = s3_bucket.removeprefix("s3://")
    for index in range(120):
        fs.pipe(f"{bucket}/reference/ref-{index:03d}.png", _png(1000 + index))
    rows = []
    for hour, flat in ((0, False), (1, True), (2, False)):
        for index in range(25):
            name = f"feed/h{hour}-{index:02d}.png"
            fs.pipe(f"{bucket}/{name}", _png(100 * hour + index, flat=flat))
            rows.append((name, START + hour * HOUR + dt.timedelta(minutes=2 * index)))
    _write_manifest(fs, bucket, rows)

    registry = ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    scoring = ScoringSettings(model=TINY)
    config = CalibrationConfig(min_window=20, check_windows=50, check_window_sizes=(20,))
    version, calibration = calibrate_reference(
        f"{s3_bucket}/reference/", registry=registry, scoring=scoring, config=config, work_dir=tmp_path / "calibrate"
    )
    # ViM and the feature projection learn from 30% of the reference, which thresholds and checks leave out.
    assert calibration.reference_images == 120 - 36
    registry.approve(version.name, version.version, by="test")

    out = f"{s3_bucket}/out"
    receiver = Receiver()
    try:
        monitor = MonitorConfig(source=f"{s3_bucket}/feed.csv", out=out, scoring=scoring, webhooks=(receiver.url,))
        first = run_monitor(monitor, registry=registry, now=NOW)
        assert [(w.window_start.hour, w.status, w.scored) for w in first.windows] == [
            (10, "ok", 25), (11, "drift", 25), (12, "ok", 25),
        ]  # fmt: skip
        pages = sorted((post["json"]["kind"], post["json"]["window"]["start"][11:13]) for post in receiver.received)
        assert pages == [("data_quality", "11"), ("drift", "11"), ("recovered", "12")]
        assert all(post["json"]["segment"] in ("dock", "") for post in receiver.received)

        again = run_monitor(monitor, registry=registry, now=NOW)
        assert again.windows == []
        assert len(receiver.received) == 3  # no second page

        fs.pipe(f"{bucket}/feed/late.png", _png(999))
        _write_manifest(fs, bucket, [*rows, ("feed/late.png", START + dt.timedelta(minutes=59))])
        late = run_monitor(monitor, registry=registry, now=NOW)
        assert [(w.window_start.hour, w.scored) for w in late.windows] == [(10, 26)]
        assert len(receiver.received) == 3
    finally:
        receiver.close()

    store = OutputStore(out)
    decisions = store.read_table("decisions").to_pylist()
    assert sorted((row["window_start"].hour, row["status"], row["n"]) for row in decisions) == [
        (10, "ok", 26), (11, "drift", 25), (12, "ok", 25),
    ]  # fmt: skip
    assert store.read_table("scores").num_rows == 76  # replaced on re-processing, never doubled
    assert fs.exists(f"{bucket}/out/_state/watermark.json")
    assert len(store.alert_names("delivered")) == 3
    assert store.alert_names("outbox") == []

    where = write_report(out, registry=registry)
    assert where == f"{out}/report.html"
    page = fs.cat(f"{bucket}/out/report.html").decode()
    assert "gradwatch drift report" in page
    alerts = page[page.index('<table id="alerts">') :]
    assert alerts[: alerts.index("</table>")].count('<tr class="drift">') == 1  # the one drift page, delivered
    windows = page[page.index('<table id="windows">') :]
    drift_row = windows[windows.index('<tr class="drift">') :]
    drift_row = drift_row[: drift_row.index("</tr>")]
    moved = json.loads(next(row for row in decisions if row["status"] == "drift")["decision"])["what_moved"]
    assert moved
    assert all(html.escape(line) in drift_row for line in moved)  # the report's "what moved" column
    # Nothing of OUT's on local disk (gradwatch 0.1 wrote its state to a local folder named "s3:").
    assert set(os.listdir(tmp_path)) <= {"calibrate", "mlflow.db", "mlartifacts"}


@pytest.mark.parametrize("out", ["memory://gradwatch-store", None])
def test_the_store_round_trips_what_it_owns(out: str | None, tmp_path: Path) -> None:
    store = OutputStore(out or str(tmp_path / "out"))
    store.save_state("watermark", {"2026-11-26T13-00-00Z": {"fingerprint": "abc"}})
    assert store.load_state("watermark") == {"2026-11-26T13-00-00Z": {"fingerprint": "abc"}}
    assert store.load_state("alert_policy") is None
    store.write_alert("outbox", "b.json", {"alert": 2})
    store.write_alert("outbox", "a.json", {"alert": 1})
    assert store.alert_names("outbox") == ["a.json", "b.json"]
    store.remove_alert("outbox", "a.json")
    assert (store.alert_names("outbox"), store.has_alert("outbox", "a.json")) == (["b.json"], False)
    assert store.read_alert("outbox", "b.json") == {"alert": 2}
    if out is None:  # on a local disk the temporaries are renamed away
        assert not [path for path in (tmp_path / "out").rglob(".*")]
