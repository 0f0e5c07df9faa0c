"""What a threshold reviewer sees in MLflow's UI, rendered by headless Chromium: the calibration experiment, the
calibration run's page (its markdown description and metrics) and the model version's page, as PNG screenshots
beside the DOM text each one rendered, with a check that the experiment opens as a runs table, not MLflow 3's GenAI
view ("No data available", traces).

Usage: python bench/mlflow_ui.py [--images DIR] [--count 200] [--out DIR] [--chromium /usr/bin/chromium]

Calibrates the default model on ``--count`` images of ``../shared/data/imagenet-samples`` (DTD textures as the
validation set) into a scratch sqlite store, serves it with ``mlflow server`` on 127.0.0.1, and writes
``experiment.png``, ``run.png`` and ``version.png`` (and ``*.txt``, the page text) under ``--out``. Needs Chromium
(Debian's ``chromium`` package): the tests cannot assume a browser, so the check lives here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
SUFFIXES = {".jpg", ".jpeg", ".png"}
# Flags without which Chromium, offline, spends its start-up on connections this machine refuses.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1500,1100",
    "--virtual-time-budget=15000",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def linked(images: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for image in images:
        (folder / image.name).symlink_to(image.resolve())
    return folder


def gradwatch(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"gradwatch {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def render(chromium: str, url: str, png: Path, profile: Path) -> str:
    """Screenshot ``url`` into ``png``; the page's rendered text (for the checks, and to read beside the picture)."""
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*common, f"--screenshot={png}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom.stdout, flags=re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
    png.with_suffix(".txt").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "imagenet-samples")
    parser.add_argument("--validation", type=Path, default=SHARED / "ood" / "dtd-textures")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "mlflow_ui")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        sys.exit(f"--chromium {args.chromium} does not exist; install Debian's chromium package or pass its path")
    images = sorted(path for path in args.images.iterdir() if path.suffix.lower() in SUFFIXES)[: args.count]
    shifted = sorted(path for path in args.validation.rglob("*") if path.suffix.lower() in SUFFIXES)[:100]
    if not images or not shifted:
        sys.exit(f"no images under --images {args.images} or --validation {args.validation}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-ui-") as scratch:
        root = Path(scratch)
        store = f"sqlite:///{root / 'mlflow.db'}"
        env = {**os.environ, "GRADWATCH_MLFLOW_URI": store, "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
        calibrated = gradwatch(
            env, "calibrate", str(linked(images, root / "reference")),
            "--validation-ood", str(linked(shifted, root / "textures")),
        )  # fmt: skip
        print(calibrated)
        run_url = re.search(r"run \w+: (\S+)", calibrated).group(1)
        port = free_port()
        server = subprocess.Popen(
            [shutil.which("mlflow", path=str(Path(sys.executable).parent)), "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--backend-store-uri", store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        sys.exit("mlflow server did not answer within 120 s")
                    time.sleep(1)
            run_url = run_url.replace("http://127.0.0.1:5000", base)
            experiment_url = re.sub(r"/runs/[^?]+", "", run_url)
            version_url = f"{base}/#/models/gradwatch-threshold-efficientnet-lite0/versions/1"
            pages = {"experiment": experiment_url, "run": run_url, "version": version_url}
            texts = {
                name: render(args.chromium, url, args.out / f"{name}.png", root / name) for name, url in pages.items()
            }
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    checks = {
        "experiment opens as a runs table (the run is listed)": "1 matching run" in texts["experiment"],
        "experiment is not the GenAI overview": "No data available" not in texts["experiment"],
        "run page shows the review checklist": "Review checklist" in texts["run"],
        "run page shows the approve command": "gradwatch thresholds approve 1" in texts["run"],
        "version page shows the description": "Review checklist" in texts["version"],
    }
    for check, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    print(f"screenshots and page text under {args.out}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
