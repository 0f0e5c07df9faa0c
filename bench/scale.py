"""`gradwatch score` on local CPU workers at scale: peak memory against rows, planning a manifest of a million rows,
the windows table of a day of 50 segments, and one window's decision over those 50 segments.

Usage: python bench/scale.py [--rows 100000 200000] [--plan-rows 1000000] [--model SPEC] [--workers 2]
       [--images DIR] [--no-scaled-decoding] [--parts rss plan decision] [--keep DIR]

Manifests name the shared images over and over, each copy under a path of its own (a symbolic link: a manifest
naming one image twice has the second row rejected as a duplicate), their event times spread evenly over 24 hours
of hourly windows and their segments over 50 cameras, row by row (each copy of the images shifted one segment
along, so that a segment's first rows and its last name different images).

Peak RSS is of the whole process tree of the command: the launcher and its local worker processes, sampled from
/proc every 0.2 s and summed (each process's resident pages, so libraries mapped by several are counted in each:
an upper bound on what the tree holds), with the launcher's own peak and the largest worker's beside it.

Planning is what `score` does before its first image is read and decoded: check the manifest, count its images
for the progress bar (beside the pipeline, as `score` does), start the workers, list every row (validated,
duplicates found) on a worker and spread the refs over the workers (`pipelines.read.SpreadListed`). Its manifest's
rows are not opened: planning a manifest with event times never touches the images.

The decision is `Calibration.decide` as the monitor calls it (`flows.monitor.window`) on a window of the largest
run's last 100 images of each of the 50 segments, every segment tested, against a calibration fitted on each
segment's first 200 (a reference of its own each), with the scores the model gives and the image properties (no
ViM nor projected features: `gradwatch calibrate` fits them, which this does not run).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-samples"
# The tiny test model on 32-pixel inputs: the whole pipeline (read, decode, preprocess, score, properties, windows,
# Parquet) at what decoding the JPEGs costs; the default model would take 90 minutes for 200,000 images on 2 cores.
TINY_MODEL = "tests.scoring.tiny_models:build?resize=32&crop=32"
START = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
HOURS = 24
SEGMENTS = 50
SAMPLE_SECONDS = 0.2
PAGE = os.sysconf("SC_PAGE_SIZE")
# Reference images per segment the decision's calibration is fitted on: 200 gets a segment its own reference.
REFERENCE_PER_SEGMENT = 200
# A window's images per segment: twice the minimum tested (50).
WINDOW_PER_SEGMENT = 100


def write_manifest(path: Path, rows: int, images: list[Path], links: Path | None) -> None:
    """``rows`` rows naming ``images`` in turn, copy ``k`` of an image as ``links/k/name`` (made when ``links`` is
    given; otherwise the rows name paths that planning never opens)."""
    folder = links or path.parent / "never-opened"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["uri", "event_time", "segment"])
        for row in range(rows):
            copy, image = divmod(row, len(images))
            named = folder / f"{copy:04d}" / images[image].name
            if links is not None:
                if image == 0:
                    named.parent.mkdir(parents=True, exist_ok=True)
                named.symlink_to(images[image])
            when = START + dt.timedelta(seconds=row * HOURS * 3600 // rows)
            # Each copy shifts the segments along, so a segment's copies are other images, not its first ones again.
            writer.writerow([str(named), when.isoformat(), f"cam-{(row + copy) % SEGMENTS:02d}"])


class TreeMemory:
    """Samples the resident memory of a process and all its descendants until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_total = 0
        self.peak_root = 0
        self.peak_root_private = 0
        self.peak_child = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pages = {pid: _resident(pid) for pid in _tree(self.pid)}
            rss = {pid: resident for pid, (resident, _) in pages.items()}
            self.peak_total = max(self.peak_total, sum(rss.values()))
            self.peak_root = max(self.peak_root, rss.get(self.pid, 0))
            self.peak_root_private = max(self.peak_root_private, pages.get(self.pid, (0, 0))[1])
            self.peak_child = max([self.peak_child, *(value for pid, value in rss.items() if pid != self.pid)])
            self.processes = max(self.processes, len(rss))
            self._stop.wait(SAMPLE_SECONDS)

    def described(self) -> str:
        return (
            f"tree {self.peak_total / 2**20:,.0f} MB ({self.processes} processes), launcher "
            f"{self.peak_root / 2**20:,.0f} MB ({self.peak_root_private / 2**20:,.0f} MB of it private), largest "
            f"worker {self.peak_child / 2**20:,.0f} MB"
        )


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    # The command name may hold spaces and parentheses: the parent's pid follows its last ")".
                    parents[int(entry)] = int(file.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended while listed
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def _resident(pid: int) -> tuple[int, int]:
    """(resident, private) bytes of a process. Its resident library pages mapped from disk are the rest: shared with
    every process that maps them, and as many as the page cache held when they were mapped, so the launcher's RSS
    before planning anything was 727 MB in one run and 976 MB in another, its private memory 390 MB in both."""
    try:
        with open(f"/proc/{pid}/statm") as file:
            fields = file.read().split()
        return int(fields[1]) * PAGE, (int(fields[1]) - int(fields[2])) * PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0


def measured(command: list[str], log: Path) -> tuple[float, TreeMemory, int]:
    """Run ``command`` with its output in ``log``: (seconds, its tree's memory, exit status)."""
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        with TreeMemory(process.pid) as memory:
            status = process.wait()
    return time.perf_counter() - started, memory, status


def gradwatch() -> str:
    return str(Path(sys.executable).with_name("gradwatch"))


def score_rows(rows: int, images: list[Path], args: argparse.Namespace, scratch: Path) -> tuple[TreeMemory, Path]:
    """Score a manifest of ``rows`` rows with ``gradwatch score --workers N``; prints what it measured."""
    folder = scratch / f"rows-{rows}"
    folder.mkdir()
    manifest = folder / "manifest.csv"
    write_manifest(manifest, rows, images, folder / "links")
    out = folder / "out"
    command = [gradwatch(), "score", str(manifest), "--out", str(out), "--model", args.model]
    command += [
        "--workers",
        str(args.workers),
        "--scaled-jpeg-decode" if args.scaled_decoding else "--no-scaled-jpeg-decode",
    ]
    seconds, memory, status = measured(command, folder / "score.log")
    lines = (folder / "score.log").read_text().splitlines()
    summary = [line for line in lines if line.startswith(("reconciliation:", "throughput", "listed", "scored"))]
    print(f"{rows:,} rows: gradwatch score --workers {args.workers}, exit {status}, {seconds:.0f} s")
    print("  " + "\n  ".join(summary))
    print(f"  peak RSS: {memory.described()}")
    if status:
        print("  " + "\n  ".join(lines[-20:]))
    check_windows_table(out)
    return memory, out


def check_windows_table(out: Path) -> None:
    """What the windows table holds, read back from its Parquet files."""
    from pipelines.store import OutputStore

    windows = OutputStore(str(out)).read_table("windows").select(["window_start", "segment", "score", "n"])
    per_score = Counter(windows.column("score").to_pylist())
    starts = set(windows.column("window_start").to_pylist())
    segments = set(windows.column("segment").to_pylist())
    counts = set(per_score.values())
    expected = HOURS * SEGMENTS
    verdict = "ok" if counts == {expected} and len(starts) == HOURS and len(segments) == SEGMENTS else "NOT AS EXPECTED"
    print(
        f"  windows table: {windows.num_rows:,} rows = {len(per_score)} scores and properties x "
        f"{'/'.join(map(str, sorted(counts)))} rows each, over {len(starts)} windows x {len(segments)} segments "
        f"({HOURS} x {SEGMENTS} = {expected} expected): {verdict}"
    )
    n = [value for value, name in zip(windows.column("n").to_pylist(), windows.column("score").to_pylist(), strict=True)
         if name == "gradnorm"]  # fmt: skip
    print(f"  images per (window, segment): {min(n)} to {max(n)}, {sum(n):,} in all")


def plan(rows: int, args: argparse.Namespace, scratch: Path, images: list[Path]) -> None:
    manifest = scratch / f"plan-{rows}.csv"
    write_manifest(manifest, rows, images, None)
    command = [sys.executable, __file__, "--child", "plan", "--manifest", str(manifest), "--workers", str(args.workers)]
    command += ["--model", args.model]
    seconds, memory, status = measured(command, scratch / f"plan-{rows}.log")
    lines = (scratch / f"plan-{rows}.log").read_text().splitlines()
    steps = json.loads(lines[-1]) if status == 0 else {}
    print(f"planning {rows:,} rows, {args.workers} workers: {seconds:.1f} s, exit {status}")
    if steps:
        print(
            f"  check {steps['check']:.1f} s, list and spread on the workers {steps['pipeline']:.1f} s (their start "
            f"included, and the progress bar's count beside them, {steps['count']:.1f} s), {steps['spread']:,} refs "
            f"spread; interpreter and imports {seconds - steps['check'] - steps['pipeline']:.1f} s"
        )
    else:
        print("  " + "\n  ".join(lines[-20:]))
    print(f"  peak RSS: {memory.described()}")


def child_plan(manifest: str, workers: int, model: str) -> dict:
    """What ``gradwatch score`` runs before its first read: the same calls, through the pipeline's own steps."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from flows.cli import _images_to_list
    from pipelines.pipeline import ScoringConfig
    from pipelines.read import SpreadListed
    from pipelines.settings import PipelineSettings
    from pipelines.sources import open_source
    from scoring import ScoringSettings

    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as progress:
        pipeline = PipelineSettings(workers=workers)
        config = ScoringConfig(
            source=manifest, out=out, scoring=ScoringSettings(model=model), pipeline=pipeline, progress_dir=progress
        )
        started = time.perf_counter()
        source = open_source(config.source)
        source.check()
        checked = time.perf_counter()

        def timed_count() -> float:
            _images_to_list(config)
            return time.perf_counter() - checked

        with tempfile.TemporaryDirectory() as tally, ThreadPoolExecutor(1) as pool:
            counting = pool.submit(timed_count)  # beside the pipeline, as `score` counts its bar's total
            beam_pipeline = beam.Pipeline(runner=FnApiRunner(), options=pipeline.options())
            (
                beam_pipeline
                | "List" >> source.listing()
                | "SpreadImages" >> SpreadListed()
                | "Count" >> beam.combiners.Count.Globally()
                | "Keep" >> beam.Map(lambda count, path: Path(path, "count").write_text(str(count)), tally)
            )
            beam_pipeline.run().wait_until_finish()
            spread = int(Path(tally, "count").read_text())
            count_seconds = counting.result()
        done = time.perf_counter()
    return {"check": checked - started, "count": count_seconds, "pipeline": done - checked, "spread": spread}


def decision(out: Path) -> None:
    """One window's decision over every segment, as the monitor makes it, against a calibration of the run's first
    images."""
    import numpy as np

    from flows.monitor.window import _by_segment
    from pipelines.records import table_values
    from pipelines.store import OutputStore
    from scoring.calibration import CalibrationConfig, calibrate, decision_sides

    scores = OutputStore(str(out)).read_table("scores")
    scores = scores.take(np.argsort(scores.column("event_time").to_numpy(), kind="stable"))
    segments = np.asarray(scores.column("segment").to_pylist(), dtype=object)
    rows = [np.flatnonzero(segments == segment) for segment in sorted(set(segments))]
    reference = scores.take(np.concatenate([each[:REFERENCE_PER_SEGMENT] for each in rows]))
    window = scores.take(np.concatenate([each[-WINDOW_PER_SEGMENT:] for each in rows]))
    names = [name for name in decision_sides() if name in reference.column_names]  # as gradwatch calibrate picks
    # Fewer held-out check windows than the default 500: the check says how often the rule alarms, not how a window
    # is decided, and the default's takes minutes over 50 segments.
    check = CalibrationConfig(check_windows=100, check_window_sizes=(50, 100))
    started = time.perf_counter()
    calibration = calibrate(
        table_values(reference, names),
        model_id=reference.column("model_id")[0].as_py(),
        segments=reference.column("segment").to_pylist(),
        config=check,
    )
    calibrated = time.perf_counter() - started
    started = time.perf_counter()
    decided = calibration.decide(_by_segment(window, calibration.scores))
    seconds = time.perf_counter() - started
    tested = len(decided.n) - len(decided.insufficient_segments)
    print(
        f"decision of one window, {window.num_rows:,} images: {len(decided.n)} segments ({tested} tested, "
        f"{WINDOW_PER_SEGMENT} images each), {len(calibration.scores)} values, {len(decided.tests):,} test records: "
        f"{seconds:.2f} s (target < 2 s); status {decided.status}, {len(decided.fired)} fired"
    )
    print(
        f"  calibration: {reference.num_rows:,} reference images, the first {REFERENCE_PER_SEGMENT} of each segment "
        f"(a reference of its own each), {check.check_windows} check windows of {check.check_window_sizes}, fitted "
        f"in {calibrated:.0f} s; the window: each segment's last {WINDOW_PER_SEGMENT} images"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=[100_000, 200_000], help="two row counts to compare")
    parser.add_argument("--plan-rows", type=int, default=1_000_000)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument(
        "--scaled-decoding",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score with libjpeg's scaled decoding: what is measured is rows, not decoding, and it scores 3-4x "
        "faster (386 against 80-120 images/s) (default: %(default)s)",
    )
    parser.add_argument("--parts", nargs="+", choices=("rss", "plan", "decision"), default=["rss", "plan", "decision"])
    parser.add_argument("--keep", type=Path, help="an empty folder to keep the manifests and outputs in")
    parser.add_argument("--child", choices=("plan",), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child_plan(args.manifest, args.workers, args.model)))
        return

    images = sorted(
        path.resolve() for path in args.images.iterdir() if path.suffix.lower() in (".jpeg", ".jpg", ".png")
    )
    print(f"{len(images)} images from {args.images.resolve()}, model {args.model}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() if args.keep is None else contextlib.nullcontext(args.keep) as scratch:
        if "rss" in args.parts or "decision" in args.parts:
            small, large = sorted(args.rows)
            peaks = {}
            out = None
            for rows in (small, large) if "rss" in args.parts else (large,):
                memory, out = score_rows(rows, images, args, Path(scratch))
                peaks[rows] = memory
            if "rss" in args.parts:
                for what in ("peak_total", "peak_root", "peak_child"):
                    ratio = getattr(peaks[large], what) / getattr(peaks[small], what)
                    print(f"peak RSS {large:,} / {small:,} rows, {what.removeprefix('peak_')}: {ratio:.3f}")
                print("  (flat: within 10%, a ratio below 1.10)")
            if "decision" in args.parts and out is not None:
                decision(out)
        if "plan" in args.parts:
            plan(1_000, args, Path(scratch), images)
            plan(args.plan_rows, args, Path(scratch), images)


if __name__ == "__main__":
    main()
