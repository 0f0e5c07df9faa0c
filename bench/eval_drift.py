"""Simulated production streams: how fast drift is caught, and how often healthy windows page.

Usage: python bench/eval_drift.py [--out DIR] [--splits 10] [--model SPEC]

From ../shared/data, everything is scored once by the Beam pipeline (gradwatch score): the 1000 ImageNet
samples (in-distribution), DTD textures and EuroSAT tiles (out-of-scope), and every ImageNet sample
under five ImageNet-C style corruptions at severity 3 (flows/corruptions.py). Then, for each of
--splits random halvings of the ImageNet samples, one half calibrates (scoring.calibration) and the
other half is production:

- clean windows: drawn from the production half only; any alarm is a false alarm;
- drifted windows: a share (10%, 25%, 50%) of the window replaced by out-of-scope images, or by the
  corrupted versions of production images; a stream is 3 clean windows then 6 drifted ones.

Windows of 50, 100 and 250 images. Printed: detection rate per drifted window, delay to the first alarm
(in windows after the drift starts), the score that fired most, and false alarms per 100 clean windows
against the stated family-wise rate. Averaging over splits measures the false-alarm rate of the method;
one split alone measures it for one reference, which varies (see README).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import SHARED, score_columns, score_folder_with_pipeline  # noqa: E402
from flows.corruptions import CORRUPTIONS  # noqa: E402
from scoring import DEFAULT_MODEL, decision_scores  # noqa: E402
from scoring.calibration import CalibrationConfig, calibrate  # noqa: E402

WINDOW_SIZES = (50, 100, 250)
SHARES = (0.10, 0.25, 0.50)
CLEAN_WINDOWS = 20
PRE_DRIFT, DRIFTED = 3, 6
SEVERITY = 3


def write_corrupted(source: Path, dest: Path, name: str) -> None:
    if dest.exists():
        return
    dest.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for path in sorted(source.glob("*.JPEG")):
        with Image.open(path) as image:
            CORRUPTIONS[name](image.convert("RGB"), SEVERITY, rng).save(dest / f"{path.stem}.png")


def by_file(table, names: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    files = [Path(uri).stem for uri in table.column("uri").to_pylist()]
    order = np.argsort(files)
    columns = score_columns(table, names)
    return [files[i] for i in order], {name: values[order] for name, values in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where images and pipeline outputs go")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gradwatch-drift-"))
    names = decision_scores()

    print(f"scoring every pool through the pipeline into {out}")
    id_files, id_scores = by_file(
        score_folder_with_pipeline(SHARED / "imagenet-samples", out / "imagenet-samples", args.model), names
    )
    pools: dict[str, dict[str, np.ndarray]] = {}
    for folder in ("dtd-textures", "eurosat"):
        pools[folder] = score_columns(
            score_folder_with_pipeline(SHARED / "ood" / folder, out / folder, args.model), names
        )
    corrupted: dict[str, dict[str, np.ndarray]] = {}
    for name in CORRUPTIONS:
        images = out / "images" / name
        write_corrupted(SHARED / "imagenet-samples", images, name)
        files, scores = by_file(score_folder_with_pipeline(images, out / f"scores-{name}", args.model), names)
        if files != id_files:
            raise SystemExit(f"corrupted set {name} does not pair with the ImageNet samples one to one")
        corrupted[name] = scores

    rng = np.random.default_rng(0)
    config = CalibrationConfig(alpha=args.alpha, check_windows=50, check_window_sizes=(50,))
    count = len(id_files)
    false_alarms, clean_windows = Counter(), Counter()
    detected: dict[tuple, list[float]] = {}
    delays: dict[tuple, list[int]] = {}
    leaders: dict[tuple, Counter] = {}
    for _ in range(args.splits):
        order = rng.permutation(count)
        reference_half, production = order[: count // 2], order[count // 2 :]
        calibration = calibrate({n: v[reference_half] for n, v in id_scores.items()}, model_id="eval", config=config)

        def window_of(clean: np.ndarray, shifted: dict[str, np.ndarray] | None = None) -> dict:
            scores = {n: id_scores[n][clean] for n in names}
            if shifted is not None:
                scores = {n: np.concatenate([scores[n], shifted[n]]) for n in names}
            return {"": scores}

        for size in WINDOW_SIZES:
            for _ in range(CLEAN_WINDOWS):
                clean_windows[size] += 1
                false_alarms[size] += calibration.decide(
                    window_of(rng.choice(production, size, replace=False))
                ).is_drift
            scenarios = {
                **{f"ood:{k}": v for k, v in pools.items()},
                **{f"corrupt:{k}": v for k, v in corrupted.items()},
            }
            for scenario, pool in scenarios.items():
                for share in SHARES:
                    key = (scenario, share, size)
                    shifted_count = round(share * size)
                    fired = []
                    for step in range(PRE_DRIFT + DRIFTED):
                        picked = rng.choice(production, size, replace=False)
                        if step < PRE_DRIFT:
                            clean_windows[size] += 1
                            false_alarms[size] += calibration.decide(window_of(picked)).is_drift
                            continue
                        clean, replaced = picked[shifted_count:], picked[:shifted_count]
                        if scenario.startswith("ood:"):
                            replaced = rng.choice(len(pool[names[0]]), shifted_count, replace=False)
                        decision = calibration.decide(window_of(clean, {n: pool[n][replaced] for n in names}))
                        fired.append(decision.is_drift)
                        leaders.setdefault(key, Counter()).update(fired_test.score for fired_test in decision.fired)
                    detected.setdefault(key, []).append(float(np.mean(fired)))
                    delays.setdefault(key, []).append(fired.index(True) if any(fired) else DRIFTED)

    print(f"\n{args.splits} random reference/production splits of {count} ImageNet samples; alpha = {args.alpha}")
    print(
        "false alarms per 100 clean windows: "
        + ", ".join(
            f"n={size}: {100 * alarms / clean_windows[size]:.2f} ({alarms}/{clean_windows[size]})"
            for size, alarms in ((size, false_alarms[size]) for size in WINDOW_SIZES)
        )
        + f"   (stated: {100 * args.alpha:.1f})"
    )
    header = "".join(f"{'n=' + str(size) + ' detect / delay':>24}" for size in WINDOW_SIZES)
    print(f"\n{'scenario':<26}{'share':>6}{header}   fired most (n=100)")
    for scenario in [*(f"ood:{k}" for k in pools), *(f"corrupt:{k}" for k in corrupted)]:
        for share in SHARES:
            cells = ""
            for size in WINDOW_SIZES:
                rate = 100 * np.mean(detected[(scenario, share, size)])
                delay = np.median(delays[(scenario, share, size)])
                shown = f"{delay:.0f}" if delay < DRIFTED else f">{DRIFTED - 1}"
                cells += f"{rate:>15.0f}% / {shown:>4}"
            top = leaders.get((scenario, share, 100), Counter()).most_common(2)
            print(f"{scenario:<26}{share:>6.0%}{cells}   {', '.join(f'{n} {c}' for n, c in top) or '-'}")


if __name__ == "__main__":
    main()
