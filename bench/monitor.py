"""The monitor's cost per window: `gradwatch monitor` over 24 hourly windows of 50 images against `gradwatch score`
over the same 1,200 images in one run, each a fresh process on the same cores, as a ratio (target: <= 1.5).

Usage: python bench/monitor.py [--images DIR] [--windows 24] [--per-window 50] [--model SPEC] [--repo PATH]

The monitor pays what `score` does plus, per window, the data-quality gates, the decision, its MLflow metrics and
the outbox; before one pipeline run scored many windows it also paid a pipeline run per window. A monitor's first
start with a threshold version also checks that version's reference against the day it scored, once per version and
OUT: the second monitor run starts on a fresh OUT that holds only the first one's record of that check, so the two
ratios are the first start's and every later run's. ``--repo`` runs the commands from another checkout (a `git
worktree` of an earlier commit) with this interpreter, for a before/after figure; the thresholds are calibrated
once, with this checkout, and approved in a scratch MLflow store.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from scoring.calibration import CalibrationConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / ".." / "shared" / "data" / "imagenet-samples"
START = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def linked(images: list[Path], folder: Path, count: int) -> list[Path]:
    """``count`` distinct paths in ``folder``, links to ``images`` taken in turn (a manifest refuses duplicates)."""
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        image = images[index % len(images)]
        path = folder / f"{index:05d}{image.suffix}"
        path.symlink_to(image.resolve())
        paths.append(path)
    return paths


def gradwatch(repo: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run one command in a fresh process; its wall time in seconds, and what it printed on stdout."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=repo, env={**env, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"gradwatch {' '.join(args[:1])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--per-window", type=int, default=50)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose monitor and score are measured")
    args = parser.parse_args()
    images = sorted(path for path in args.images.iterdir() if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not images:
        sys.exit(f"--images {args.images} holds no images; point it at ../shared/data/imagenet-samples")
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as scratch:
        root = Path(scratch)
        env = {**os.environ, "GRADWATCH_MLFLOW_URI": f"sqlite:///{root / 'mlflow.db'}", "GX_ANALYTICS_ENABLED": "false"}
        # A healthy feed, the steady state whose cost this measures: every window a random draw of the reference
        # images the thresholds were set on. ImageNet's samples are one per class, so a reference of half of them
        # is half the classes: a feed of all of them failed the reference check (77% of windows of 250 paged) and
        # drifted in 7 of 24 windows; a feed of every reference image drifted in 22, on the images ViM and the
        # feature projection were fitted on, whose fitted scores sit apart from any image's the fit never saw.
        reference = linked(images[::2], root / "reference", len(images[::2]))
        fitted = CalibrationConfig().fits_on(str(path) for path in reference)
        population = [path.resolve() for path in reference if str(path) not in fitted]
        gradwatch(REPO, env, "calibrate", str(root / "reference"), "--model", args.model)
        gradwatch(REPO, env, "thresholds", "approve", "1", "--by", "bench", "--model", args.model)
        total = args.windows * args.per_window
        feed = linked(
            random.Random(0).sample(population * math.ceil(total / len(population)), total), root / "feed", total
        )
        manifest = root / "feed.csv"
        with manifest.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["uri", "event_time"])
            for index, path in enumerate(feed):
                hour, rank = divmod(index, args.per_window)
                writer.writerow([str(path), (START + dt.timedelta(hours=hour, seconds=10 * rank)).isoformat()])
        until = (START + dt.timedelta(hours=args.windows)).isoformat()
        common = ("--model", args.model, "--until", until)
        score, _ = gradwatch(args.repo, env, "score", str(manifest), "--out", str(root / "scored"), *common)
        monitor, printed = gradwatch(
            args.repo, env, "monitor", str(manifest), "--out", str(root / "monitored"), *common
        )
        drifted = sum("  drift" in line for line in printed.splitlines())
        checked = root / "monitored" / "_state" / "reference_check.json"
        again = None
        if checked.exists():  # a checkout from before the reference check has no later runs to tell apart
            seeded = root / "monitored-again" / "_state"
            seeded.mkdir(parents=True)
            shutil.copy(checked, seeded / checked.name)
            again, _ = gradwatch(args.repo, env, "monitor", str(manifest), "--out", str(seeded.parent), *common)
    print(f"checkout:  {args.repo}")
    print(f"images:    {total} in {args.windows} windows of {args.per_window}, model {args.model}")
    print(f"score:     {score:.1f} s (one pipeline run, fresh process)")
    print(f"monitor:   {monitor:.1f} s (gates, decisions, MLflow and outbox per window, any reference check)")
    print(f"drift:     {drifted} of {args.windows} windows (a healthy feed: about alpha's share expected)")
    print(f"ratio:     first start / score = {monitor / score:.2f} (target <= 1.5)")
    if again is not None:
        print(f"again:     {again:.1f} s (the same on a fresh OUT, the version's reference check already recorded)")
        print(f"ratio:     later runs / score = {again / score:.2f} (target <= 1.5)")
        per_window = (again - score) / args.windows
        print(f"per window over score: {per_window:.2f} s; the reference check: {monitor - again:.1f} s")


if __name__ == "__main__":
    main()
