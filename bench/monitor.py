"""The monitor's cost per window: `gradwatch monitor` over 24 hourly windows of 50 images against `gradwatch score`
over the same 1,200 images in one run, each a fresh process on the same cores, as a ratio (target: <= 1.5).

Usage: python bench/monitor.py [--images DIR] [--windows 24] [--per-window 50] [--model SPEC] [--repo PATH]

The monitor pays what `score` does plus, per window, the data-quality gates, the decision, its MLflow metrics and
the outbox; before one pipeline run scored many windows it also paid a pipeline run per window. ``--repo`` runs the
commands from another checkout (a `git worktree` of an earlier commit) with this interpreter, for a before/after
figure; the thresholds are calibrated once, with this checkout, and approved in a scratch MLflow store.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def gradwatch(repo: Path, env: dict[str, str], *args: str) -> float:
    """Run one command in a fresh process; its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=repo, env={**env, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"gradwatch {' '.join(args[:1])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


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
        # Every other class: a reference that is a sample of the feed (see "Calibration and drift decisions" in
        # README); a reference unlike the feed pages every window and runs each test to its last permutation.
        linked(images[::2], root / "reference", len(images[::2]))
        gradwatch(REPO, env, "calibrate", str(root / "reference"), "--model", args.model)
        gradwatch(REPO, env, "thresholds", "approve", "1", "--by", "bench", "--model", args.model)
        total = args.windows * args.per_window
        feed = linked(images, root / "feed", total)
        manifest = root / "feed.csv"
        with manifest.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["uri", "event_time"])
            for index, path in enumerate(feed):
                hour, rank = divmod(index, args.per_window)
                writer.writerow([str(path), (START + dt.timedelta(hours=hour, seconds=10 * rank)).isoformat()])
        until = (START + dt.timedelta(hours=args.windows)).isoformat()
        common = ("--model", args.model, "--until", until)
        score = gradwatch(args.repo, env, "score", str(manifest), "--out", str(root / "scored"), *common)
        monitor = gradwatch(args.repo, env, "monitor", str(manifest), "--out", str(root / "monitored"), *common)
    print(f"checkout:  {args.repo}")
    print(f"images:    {total} in {args.windows} windows of {args.per_window}, model {args.model}")
    print(f"score:     {score:.1f} s (one pipeline run, fresh process)")
    print(f"monitor:   {monitor:.1f} s (gates, decisions, MLflow and outbox per window, fresh process)")
    print(f"ratio:     monitor / score = {monitor / score:.2f} (target <= 1.5)")
    print(f"per window over score: {(monitor - score) / args.windows:.2f} s")


if __name__ == "__main__":
    main()
