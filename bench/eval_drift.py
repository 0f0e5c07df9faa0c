"""Simulated production windows: what each family of tests catches, and how often healthy windows page.

Usage: python bench/eval_drift.py [--out DIR] [--splits 10] [--severities 3] [--windows 10] [--model SPEC]

Needs ../shared/data and the `bench` extra (`pip install -e ".[bench]"`: ImageNet-C's own corruptions, from the
`imagecorruptions` package). Everything is scored once by the Beam pipeline (gradwatch score) and cached in
--out: the 1000 ImageNet samples (in distribution), DTD textures and EuroSAT tiles (new kinds of input), and every
ImageNet sample under seven ImageNet-C corruptions (each saved as a JPEG at its source's own quality, so the file
format tells nothing). Then, for each of --splits random halvings of the ImageNet samples, one half calibrates
(scoring.calibration) and the other half is production:

- healthy windows: drawn from the production half only; any alarm is a false alarm;
- shifted windows: a share (10%, 25%, 50%) of the window replaced by new kinds of input, or by the corrupted
  versions of other production images.

Each family of values is calibrated and decided on its own (scores: GradNorm, Energy, MSP, MaxLogit; image
properties: scoring.properties), and together (the decision gradwatch makes), Holm-corrected to alpha per window.
Printed: false alarms per 100 healthy windows with their 95% interval, detection per (shift, share) and family at
windows of 50, 100 and 250, the model's top-1 on each corrupted set, and what deciding one window costs.
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
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from bench.common import SHARED, score_folder_with_pipeline, top1  # noqa: E402
from scoring import DEFAULT_MODEL, decision_scores  # noqa: E402
from scoring.calibration import CalibrationConfig, calibrate  # noqa: E402
from scoring.jpeg import read_jpeg_header  # noqa: E402
from scoring.properties import registered_properties  # noqa: E402

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "jpeg_compression", "brightness", "fog", "contrast", "pixelate")
NEW_KINDS = {"dtd": SHARED / "ood" / "dtd-textures", "eurosat": SHARED / "ood" / "eurosat"}
WINDOW_SIZES = (50, 100, 250)
SHARES = (0.10, 0.25, 0.50)


def write_corrupted(source: Path, dest: Path, name: str, severity: int) -> None:
    """ImageNet-C's corruption of every image, saved as a JPEG at the quality its source was saved at."""
    if dest.exists():
        return
    import imagecorruptions

    np.float_ = np.float64  # imagecorruptions' fog still names the alias NumPy 2 removed
    dest.mkdir(parents=True)
    for path in sorted(source.glob("*.JPEG")):
        data = path.read_bytes()
        header = read_jpeg_header(data)
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        corrupted = imagecorruptions.corrupt(pixels, corruption_name=name, severity=severity)
        quality = header.quality if header is not None and header.quality is not None else 90
        Image.fromarray(np.uint8(np.clip(corrupted, 0, 255))).save(dest / path.name, "JPEG", quality=quality)


def columns_by_file(table, names: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    files = [Path(uri).name for uri in table.column("uri").to_pylist()]
    order = np.argsort(files)
    columns = {name: table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)[order] for name in names}
    return [files[index] for index in order], columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where images and pipeline outputs go (a cache)")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--severities", type=int, nargs="+", default=[3])
    parser.add_argument("--windows", type=int, default=10, help="shifted windows per (split, shift, share, size)")
    parser.add_argument("--healthy", type=int, default=60, help="healthy windows per (split, size)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gradwatch-drift-"))
    families = {"scores": decision_scores(), "properties": list(registered_properties())}
    families["combined"] = [*families["scores"], *families["properties"]]
    names = families["combined"]

    print(f"scoring every pool through the pipeline into {out}")
    clean = score_folder_with_pipeline(SHARED / "imagenet-samples", out / "imagenet-samples", args.model)
    files, healthy_pool = columns_by_file(clean, names)
    labels = SHARED / "imagenet-samples" / "labels.csv"
    accuracy = {"healthy": top1(clean, labels)}
    shifted_pools: dict[str, dict[str, np.ndarray]] = {}
    paired: set[str] = set()
    for kind, folder in NEW_KINDS.items():
        shifted_pools[kind] = columns_by_file(score_folder_with_pipeline(folder, out / kind, args.model), names)[1]
    for severity in args.severities:
        for name in CORRUPTIONS:
            label = f"{name}-{severity}"
            images = out / "images" / label
            write_corrupted(SHARED / "imagenet-samples", images, name, severity)
            table = score_folder_with_pipeline(images, out / f"scores-{label}", args.model)
            corrupted_files, columns = columns_by_file(table, names)
            if corrupted_files != files:
                raise SystemExit(f"corrupted set {label} does not pair with the ImageNet samples one to one")
            shifted_pools[label], accuracy[label] = columns, top1(table, labels)
            paired.add(label)

    rng = np.random.default_rng(0)
    config = CalibrationConfig(alpha=args.alpha, check_windows=200, check_window_sizes=(50, 100))
    alarms = defaultdict(list)  # (family, size) -> per split, the share of its healthy windows that paged
    detected = defaultdict(list)  # (family, shift, share, size) -> fired per window
    spent = defaultdict(float)
    decided = defaultdict(int)
    count = len(files)
    for _ in range(args.splits):
        order = rng.permutation(count)
        reference, production = order[: count // 2], order[count // 2 :]
        calibrations = {
            family: calibrate({n: healthy_pool[n][reference] for n in columns}, model_id="eval", config=config)
            for family, columns in families.items()
        }

        def decide(family: str, picked: np.ndarray, shifted: dict | None = None, replaced=None, fitted=calibrations):
            window = {n: healthy_pool[n][picked] for n in families[family]}
            if shifted is not None:
                window = {n: np.concatenate([values, shifted[n][replaced]]) for n, values in window.items()}
            started = time.perf_counter()
            decision = fitted[family].decide({"": window})
            spent[family] += time.perf_counter() - started
            decided[family] += 1
            return decision.is_drift

        for size in WINDOW_SIZES:
            paged = defaultdict(int)
            for _ in range(args.healthy):
                picked = rng.choice(production, size, replace=False)
                for family in families:
                    paged[family] += decide(family, picked)
            for family in families:
                alarms[(family, size)].append(paged[family] / args.healthy)
            for shift, pool in shifted_pools.items():
                for share in SHARES:
                    replaced_count = round(share * size)
                    for _ in range(args.windows):
                        picked = rng.choice(production, size, replace=False)
                        kept, others = picked[replaced_count:], picked[:replaced_count]
                        # A corrupted set pairs with the samples: corrupt other production images, never the kept.
                        new_kind = rng.choice(len(pool[names[0]]), replaced_count, replace=False)
                        replaced = others if shift in paired else new_kind
                        for family in families:
                            detected[(family, shift, share, size)].append(decide(family, kept, pool, replaced))
    report(args, families, alarms, detected, accuracy, spent, decided, shifted_pools)


def split_interval(rates: list[float]) -> tuple[float, float, float]:
    """Mean rate and its 95% interval across splits: windows of one split share a reference, so their alarms are
    not independent, and a binomial interval over all windows would be too narrow; the splits are."""
    values = np.asarray(rates)
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0
    return float(values.mean()), max(0.0, float(values.mean() - half)), float(values.mean() + half)


def report(args, families, alarms, detected, accuracy, spent, decided, shifted_pools) -> None:
    print(f"\n{args.splits} reference/production splits of the ImageNet samples; alpha = {args.alpha}")
    print(f"false alarms per 100 healthy windows ({args.healthy} a split and size; 95% interval across splits):")
    for family in families:
        cells = []
        for size in WINDOW_SIZES:
            mean, low, high = split_interval(alarms[(family, size)])
            cells.append(f"n={size}: {100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]")
        print(f"  {family:<11} " + "   ".join(cells))
    print("\ndetected, % of shifted windows (n=100: scores / properties / combined; combined at n=50 and n=250)")
    print(f"{'shift':<22}{'top-1':>7}{'share':>7}{'scores':>9}{'props':>7}{'both':>7}{'n=50':>8}{'n=250':>7}")
    for shift in shifted_pools:
        for share in SHARES:
            rate = {family: 100 * np.mean(detected[(family, shift, share, 100)]) for family in families}
            small = 100 * np.mean(detected[("combined", shift, share, 50)])
            large = 100 * np.mean(detected[("combined", shift, share, 250)])
            shown = f"{accuracy[shift]:.2f}" if shift in accuracy else "-"
            print(
                f"{shift:<22}{shown:>7}{share:>7.0%}{rate['scores']:>9.0f}{rate['properties']:>7.0f}"
                f"{rate['combined']:>7.0f}{small:>8.0f}{large:>7.0f}"
            )
    print(f"\nmodel top-1 on the healthy samples: {accuracy['healthy']:.3f}")
    costs = ", ".join(f"{family} {1000 * spent[family] / decided[family]:.1f}" for family in families)
    print(f"deciding one window (one segment), ms: {costs}")


if __name__ == "__main__":
    main()
