"""Accuracy estimated without labels (ATC, DoC) against the true accuracy of production windows, per shift.

Usage: python bench/eval_accuracy.py [--out DIR] [--splits 10] [--windows 50] [--severity 3]
                                     [--corruptions NAME...] [--check-windows 50] [--model SPEC]

Reads the pools bench/eval_drift.py scores into its cache (pass the same --out; anything missing is scored there
first). For each of --splits random halvings of the ImageNet samples (the same splits as eval_drift's), the reference
half calibrates as eval_drift calibrates it, with each image's label (correct: the prediction is its class), so the
calibration fits ATC's threshold and DoC's reference accuracy. Production windows of 100 are drawn from the other
half: healthy, and with 10%, 25%, 50% or all of the window replaced by a corruption's versions of other production
images (whose true correctness is their own prediction against their label) or by DTD textures or EuroSAT tiles
(no ImageNet class is right for them: correctness 0). Printed per shift and share: the windows' true top-1, ATC's
and DoC's estimates and mean absolute errors, how often each 95% interval holds the truth, and the fall in
confidence (what a calibration without labels estimates) against the true fall in accuracy; then where the
estimates fail, and the calibration's own held-out check on healthy windows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from bench.eval_drift import (  # noqa: E402
    CORRUPTIONS,
    bench_config,
    calibrate_split,
    draw_window,
    load_pools,
    split_orders,
)
from scoring import DEFAULT_MODEL  # noqa: E402
from scoring.accuracy import CONFIDENCE  # noqa: E402
from scoring.calibration import PREDICTION  # noqa: E402

SHARES = (0.10, 0.25, 0.50, 1.00)
WINDOW = 100
# An estimate off by more than this on a whole shifted window misleads whoever reads it: the severity policy pages
# from a 3-point drop, and a healthy window's estimate is off by about 3 points by chance alone.
FAILS_BY = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="eval_drift's cache of scored pools")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--windows", type=int, default=50, help="windows per (split, shift, share)")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    parser.add_argument(
        "--check-windows",
        type=int,
        default=50,
        help="the calibration's held-out check windows per size (the estimators do not depend on them)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gradwatch-drift-"))
    pools = load_pools(out, args.model, [args.severity], args.corruptions)
    config = bench_config(check_windows=args.check_windows)
    rows = defaultdict(lambda: defaultdict(list))  # (shift, share) -> measure -> per window
    checks = defaultdict(list)  # window size -> per split, (mean absolute error, coverage) of the held-out check
    spent = defaultdict(float)
    count = len(pools.files)
    for split, order in enumerate(split_orders(count, args.splits)):
        print(f"split {split + 1}/{args.splits}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        current = calibrate_split(pools, order[: count // 2], config)
        spent["calibration"] += time.perf_counter() - started
        started = time.perf_counter()
        production = order[count // 2 :]
        model = current.calibration.accuracy
        for check in current.calibration.accuracy_checks:
            checks[check.window_size].append((check.mean_absolute_error, check.coverage))
        rng = np.random.default_rng((6, split))
        cases = [("healthy", 0.0)] + [(shift, share) for shift in current.shifted for share in SHARES]
        for shift, share in cases:
            values = current.shifted.get(shift)
            for _ in range(args.windows):
                if values is None:
                    kept = rng.choice(production, WINDOW, replace=False)
                    confidences, truth = current.healthy[CONFIDENCE][kept], pools.correct["healthy"][kept]
                else:
                    kept, replaced = draw_window(
                        rng, production, WINDOW, share, len(values[PREDICTION]), shift in pools.paired
                    )
                    confidences = np.concatenate([current.healthy[CONFIDENCE][kept], values[CONFIDENCE][replaced]])
                    truth = np.concatenate([pools.correct["healthy"][kept], pools.correct[shift][replaced]])
                estimate = model.estimate(confidences)
                accuracy = float(truth.mean())
                row = rows[(shift, share)]
                row["truth"].append(accuracy)
                row["atc"].append(estimate.atc.estimate)
                row["doc"].append(estimate.doc.estimate)
                row["atc covered"].append(estimate.atc.low <= accuracy <= estimate.atc.high)
                row["doc covered"].append(estimate.doc.low <= accuracy <= estimate.doc.high)
                row["drop"].append(estimate.drop.estimate)
                row["true drop"].append(estimate.reference - accuracy)
        spent["estimates"] += time.perf_counter() - started
    report(rows, checks, pools.accuracy, args)
    print("\nseconds spent, all splits: " + ", ".join(f"{part} {seconds:.0f}" for part, seconds in spent.items()))


def report(rows: dict, checks: dict, accuracy: dict[str, float], args: argparse.Namespace) -> None:
    print(
        f"\n{args.splits} reference/production splits of the ImageNet samples; {args.windows} windows of {WINDOW} per "
        f"split, shift and share; reference labelled (correct = prediction is the class); severity {args.severity}"
    )
    print("means over windows; err: mean absolute error; cover: share of windows whose 95% interval held the truth;")
    print("drop: the fall in mean confidence (DoC's, estimable without labels); true drop: reference top-1 - window's")
    header = ("true", "ATC", "DoC", "ATC err", "DoC err", "ATC cov", "DoC cov", "drop", "true drop")
    print(f"{'shift':<22}{'top-1':>7}{'share':>7}" + "".join(f"{label:>10}" for label in header))
    for (shift, share), row in rows.items():
        truth = np.asarray(row["truth"])
        cells = [
            np.mean(truth),
            np.mean(row["atc"]),
            np.mean(row["doc"]),
            np.mean(np.abs(np.asarray(row["atc"]) - truth)),
            np.mean(np.abs(np.asarray(row["doc"]) - truth)),
            np.mean(row["atc covered"]),
            np.mean(row["doc covered"]),
            np.mean(row["drop"]),
            np.mean(row["true drop"]),
        ]
        print(f"{shift:<22}{accuracy[shift]:>7.2f}{share:>7.0%}" + "".join(f"{cell:>10.3f}" for cell in cells))
    for size, entries in sorted(checks.items()):
        error, coverage = np.mean(entries, axis=0)
        print(
            f"the calibrations' own held-out check, healthy windows of {size}: ATC err {error:.3f}, "
            f"cover {coverage:.2f}"
        )
    print(f"\nwhere the estimates fail (a whole window shifted; ATC off by more than {FAILS_BY:.2f}):")
    failing, holding = [], []
    for (shift, share), row in rows.items():
        if share != 1.0:
            continue
        truth, atc = np.mean(row["truth"]), np.mean(row["atc"])
        drop, true_drop = np.mean(row["drop"]), np.mean(row["true drop"])
        line = (
            f"  {shift:<20} true top-1 {truth:.2f}, ATC {atc:.2f} (off by {atc - truth:+.2f}), DoC "
            f"{np.mean(row['doc']):.2f}; confidence fell {drop:.2f} while accuracy fell {true_drop:.2f}"
        )
        (failing if abs(atc - truth) > FAILS_BY else holding).append((abs(atc - truth), line))
    for _, line in sorted(failing, reverse=True):
        print(line)
    print("  and where ATC holds:")
    for _, line in sorted(holding, reverse=True):
        print(line)


if __name__ == "__main__":
    main()
