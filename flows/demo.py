"""The one-command demo: a simulated day of production images with drift injected from a known hour.

Everything runs offline on embedded defaults: local folders, MLflow's sqlite store, the local Beam runner, and a
webhook receiver on 127.0.0.1. The healthy feed is augmented photographs (random crops, flips, colour jitter);
from the drift hour on, a growing share of each window is replaced by corrupted photographs (noise, blur)
and by out-of-scope images (text pages, textures, microscopy, sky, coins).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from flows.alerts import SECRET_ENV
from flows.calibrate import calibrate_reference
from flows.corruptions import CORRUPTIONS
from flows.monitor import MonitorConfig, MonitorReport, WindowOutcome, run_monitor
from flows.registry import ThresholdRegistry
from flows.sample_images import IN_SCOPE, OUT_OF_SCOPE, sample_data_dir
from scoring import DEFAULT_MODEL, ScoringSettings
from scoring.calibration import CalibrationConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class DemoConfig:
    """The simulated day. Defaults finish in a few minutes on 2 cores."""

    # A fixed past day, so every window is complete whenever the demo runs.
    start: dt.datetime = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    hours: int = 24
    # Enough per window for the tests to have power at min_window = 30.
    images_per_hour: int = 40
    reference_images: int = 300
    min_window: int = 30
    # Drift starts at 14:00 with 40% of the window and grows 10 points an hour.
    drift_hour: int = 14
    first_drift_share: float = 0.4
    drift_growth: float = 0.1
    seed: int = 0

    def drift_share(self, hour: int) -> float:
        if hour < self.drift_hour:
            return 0.0
        return min(0.9, self.first_drift_share + self.drift_growth * (hour - self.drift_hour))


@dataclass
class DemoResult:
    report: MonitorReport
    alerts: list[dict]
    workdir: Path
    threshold_version: str
    threshold_name: str


def healthy_photos(source: Path | None) -> list[Image.Image]:
    """The user's own images, or the photographs scikit-image ships."""
    if source is None:
        paths = [sample_data_dir() / name for name in IN_SCOPE]
    else:
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"--source {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [Image.open(path).convert("RGB") for path in paths]


def augment(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop of 50-100% of the area, a flip, and +-20% brightness, contrast and saturation."""
    width, height = photo.size
    scale = np.sqrt(rng.uniform(0.5, 1.0))
    crop_w, crop_h = int(width * scale), int(height * scale)
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.8, 1.2))
    image.thumbnail((320, 320))
    return image


def build_feed(workdir: Path, config: DemoConfig, source: Path | None = None) -> tuple[Path, Path]:
    """Write the reference folder and the day's feed (images plus a manifest with event times).

    Returns:
        (reference folder, feed manifest).
    """
    rng = np.random.default_rng(config.seed)
    photos = healthy_photos(source)
    out_of_scope = [Image.open(sample_data_dir() / name).convert("RGB") for name in OUT_OF_SCOPE]
    # Fog at any severity leaves this model's scores in the healthy range (bench/eval_drift.py), so the demo
    # breaks lenses with noise and blur.
    corruptions: list[Callable] = [CORRUPTIONS[name] for name in ("gaussian_noise", "defocus_blur")]

    reference = workdir / "reference"
    reference.mkdir(parents=True, exist_ok=True)
    for index in range(config.reference_images):
        augment(photos[index % len(photos)], rng).save(reference / f"ref-{index:04d}.jpg", quality=90)

    images = workdir / "feed"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for hour in range(config.hours):
        drifted = round(config.drift_share(hour) * config.images_per_hour)
        for index in range(config.images_per_hour):
            healthy = augment(photos[int(rng.integers(len(photos)))], rng)
            if index < drifted and index % 2 == 0:
                image, kind = corruptions[index // 2 % len(corruptions)](healthy, 5, rng), "corrupted"
            elif index < drifted:
                image, kind = augment(out_of_scope[int(rng.integers(len(out_of_scope)))], rng), "out_of_scope"
            else:
                image, kind = healthy, "healthy"
            name = f"{hour:02d}-{index:03d}-{kind}.jpg"
            image.save(images / name, quality=90)
            when = config.start + dt.timedelta(hours=hour, seconds=int(rng.integers(0, 3600)))
            rows.append({"uri": f"feed/{name}", "event_time": when.isoformat(), "segment": "line-1"})
    manifest = workdir / "feed.csv"
    with manifest.open("w", newline="") as file:
        writer = csv.DictWriter(file, ["uri", "event_time", "segment"])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["event_time"]))
    return reference, manifest


@contextmanager
def alert_receiver(log_path: Path) -> Iterator[str]:
    """A webhook receiver on 127.0.0.1 that appends every alert it gets to ``log_path``; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with log_path.open("a") as file:
                file.write(body.decode() + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()


def run_demo(
    workdir: Path,
    config: DemoConfig | None = None,
    *,
    source: Path | None = None,
    model: str = DEFAULT_MODEL,
    say: Callable[[str], None] = print,
    on_planned: Callable[[Sequence[dt.datetime]], None] | None = None,
    on_window: Callable[[WindowOutcome], None] | None = None,
) -> DemoResult:
    """Build the feed, calibrate, auto-approve, monitor the day with alerts to a local receiver; ``on_planned`` and
    ``on_window`` follow the monitor's progress as :func:`flows.monitor.run_monitor`'s do."""
    config = config or DemoConfig()
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"1/4 building a simulated day of images in {workdir} (drift injected from {config.drift_hour:02d}:00)")
    reference, manifest = build_feed(workdir, config, source)
    registry = ThresholdRegistry(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    say(f"2/4 calibrating on {config.reference_images} reference images")
    calibration_config = CalibrationConfig(min_window=config.min_window, check_window_sizes=(config.min_window,))
    scoring = ScoringSettings(model=model)
    version, _ = calibrate_reference(
        str(reference), registry=registry, scoring=scoring, config=calibration_config, work_dir=workdir / "calibration"
    )
    registry.approve(version.name, version.version, by="gradwatch-demo", note="auto-approved by the demo")
    say(f"    the demo AUTO-APPROVES {version.name} v{version.version}; in production an ML owner reviews it first")
    os.environ.setdefault(SECRET_ENV, secrets.token_hex(16))
    alerts_log = workdir / "received_alerts.jsonl"
    alerts_log.unlink(missing_ok=True)
    say(f"3/4 monitoring {config.hours} hourly windows, alerts to a webhook receiver on 127.0.0.1")
    with alert_receiver(alerts_log) as url:
        monitor_config = MonitorConfig(
            source=str(manifest), out=str(workdir / "out"), scoring=scoring, webhooks=(url,),
            since=config.start, until=config.start + dt.timedelta(hours=config.hours),
        )  # fmt: skip
        report = run_monitor(monitor_config, registry=registry, on_planned=on_planned, on_window=on_window)
    alerts = [json.loads(line) for line in alerts_log.read_text().splitlines()] if alerts_log.exists() else []
    return DemoResult(report, alerts, workdir, version.version, version.name)


def summary_lines(result: DemoResult, config: DemoConfig, registry: ThresholdRegistry, report: Path) -> list[str]:
    """What the demo prints once done: each window, the alerts received, where every output lies, how to review."""
    lines = ["4/4 done. Window by window:"]
    for window in result.report.windows:
        labels = [test.label for test in window.fired]
        fired = ", ".join(labels[:3]) + (" ..." if len(labels) > 3 else "")
        lines.append(f"    {window.window_start:%H:%M}  {window.status:<17} n={window.scored:<4} {fired}")
    lines.append("alerts received by the local webhook, in order:")
    for alert in result.alerts:
        lines.append(f"    {alert['window']['start'][11:16]}  {alert['kind']:<12} {alert['summary'][:90]}")
    check = result.report.reference_check
    if check is not None and not check.representative:
        lines.append(
            f"reference check: not representative, as expected here: from {config.drift_hour:02d}:00 the day carries "
            "injected drift, and the check counts drift windows (a reference unlike the feed is what makes healthy "
            "windows drift). In production this verdict means: calibrate from production, as the warning says."
        )
    out = (result.workdir / "out").resolve()
    lines += [
        f"Parquet outputs: {out}/scores, windows, rejected, decisions",
        f"                 e.g. duckdb: select * from '{out}/decisions/*/*.parquet'",
        f"report:          {report.resolve()}",
        f"alerts:          {(result.workdir / 'received_alerts.jsonl').resolve()}",
    ]
    links = registry.review_links(registry.get(result.threshold_name, result.threshold_version))
    if links.start_ui:
        lines.append(f"MLflow UI:       {links.start_ui}")
    lines.append(f"                 then the calibration run: {links.run}")
    return lines
