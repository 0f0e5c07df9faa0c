"""Simulated production windows: what each family of tests catches, and how often healthy windows page.

Usage: python bench/eval_drift.py [--out DIR] [--splits 10] [--severities 3] [--corruptions NAME...]
                                  [--sizes 50 100 250] [--windows 10] [--model SPEC]

Needs ../shared/data and the `bench` extra (`pip install -e ".[bench]"`: ImageNet-C's own corruptions, from the
`imagecorruptions` package). Everything is scored once by the Beam pipeline (gradwatch score) and cached in
--out, with each image's head outputs: the 1000 ImageNet samples (in distribution), DTD textures and EuroSAT tiles
(new kinds of input), and every ImageNet sample under seven ImageNet-C corruptions (each saved as a JPEG at its
source's own quality, so the file format tells nothing). Then, for each of --splits random halvings of the ImageNet
samples, one half is the reference (30% of it fits ViM and the feature projection, the rest calibrates, as
`gradwatch calibrate` splits it) and the other half is production:

- healthy windows: drawn from the production half only; any alarm is a false alarm;
- shifted windows: a share (10%, 25%, 50%) of the window replaced by new kinds of input, or by the corrupted
  versions of other production images.

Every window is decided once with every test (the decision gradwatch makes: Holm over all of them, "all"); each
family's own decision (scores, image properties, the MMD on the projected features, the predicted classes) is Holm
over its tests' p-values alone, and "by_fam" is the alternative combination, each family's Bonferroni p-value
then Holm across families. Printed: false alarms per 100 healthy windows with their 95% interval across splits and
the calibration's own held-out check, detection per (shift, share) and decision at windows of 100 (the combined
one at 50 and 250 too), the model's top-1 on each corrupted set, and what deciding a window costs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from bench.common import SHARED, head_outputs, score_folder_with_pipeline, top1  # noqa: E402
from pipelines.records import table_values  # noqa: E402
from scoring import DEFAULT_MODEL, decision_scores, load_model, registered_scores  # noqa: E402
from scoring.calibration import PREDICTION, CalibrationConfig, calibrate  # noqa: E402
from scoring.drift import decide_window, holm  # noqa: E402
from scoring.features import FEATURES, FeatureProjection, fit_projection  # noqa: E402
from scoring.jpeg import read_jpeg_header  # noqa: E402
from scoring.properties import registered_properties  # noqa: E402
from scoring.scores import HeadOutputs  # noqa: E402
from scoring.separation import auroc  # noqa: E402

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "jpeg_compression", "brightness", "fog", "contrast", "pixelate")
NEW_KINDS = {"dtd": SHARED / "ood" / "dtd-textures", "eurosat": SHARED / "ood" / "eurosat"}
WINDOW_SIZES = (50, 100, 250)
SHARES = (0.10, 0.25, 0.50)


def write_corrupted(source: Path, dest: Path, name: str, severity: int) -> None:
    """ImageNet-C's corruption of every image, saved as a JPEG at the quality its source was saved at; written to a
    temporary folder renamed when complete, so an interrupted run never leaves a partial set in the cache."""
    if dest.exists():
        return
    import imagecorruptions

    np.float_ = np.float64  # imagecorruptions' fog still names the alias NumPy 2 removed
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in sorted(source.glob("*.JPEG")):
        data = path.read_bytes()
        header = read_jpeg_header(data)
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        corrupted = imagecorruptions.corrupt(pixels, corruption_name=name, severity=severity)
        quality = header.quality if header is not None and header.quality is not None else 90
        Image.fromarray(np.uint8(np.clip(corrupted, 0, 255))).save(partial / path.name, "JPEG", quality=quality)
    partial.rename(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where images and pipeline outputs go (a cache)")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--severities", type=int, nargs="+", default=[3])
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(WINDOW_SIZES), help="window sizes (100 among them)"
    )
    parser.add_argument("--windows", type=int, default=10, help="shifted windows per (split, shift, share, size)")
    parser.add_argument("--healthy", type=int, default=60, help="healthy windows per (split, size)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gradwatch-drift-"))
    families = {
        "scores": decision_scores(),
        "properties": list(registered_properties()),
        "features": [FEATURES],
        "predictions": [PREDICTION],
    }
    measured = [*families["properties"], PREDICTION]

    print(f"scoring every pool through the pipeline into {out}")

    def pool(folder: Path, label: str) -> tuple[list[str], dict[str, np.ndarray], object]:
        table = score_folder_with_pipeline(folder, out / label, args.model)
        heads = head_outputs(folder, out / "heads" / f"{label}.npz", args.model)
        return (*pool_values(table, heads, measured), table)

    files, healthy_pool, clean = pool(SHARED / "imagenet-samples", "imagenet-samples")
    labels = SHARED / "imagenet-samples" / "labels.csv"
    accuracy = {"healthy": top1(clean, labels)}
    shifted_pools: dict[str, dict[str, np.ndarray]] = {}
    paired: set[str] = set()
    for kind, folder in NEW_KINDS.items():
        shifted_pools[kind] = pool(folder, kind)[1]
    for severity in args.severities:
        for name in args.corruptions:
            label = f"{name}-{severity}"
            images = out / "images" / label
            write_corrupted(SHARED / "imagenet-samples", images, name, severity)
            corrupted_files, columns, table = pool(images, f"scores-{label}")
            if corrupted_files != files:
                raise SystemExit(f"corrupted set {label} does not pair with the ImageNet samples one to one")
            shifted_pools[label], accuracy[label] = columns, top1(table, labels)
            paired.add(label)
    head_layer = load_model(args.model).head
    head = (head_layer.weight.detach().double(), head_layer.bias.detach().double())

    rng = np.random.default_rng(0)
    config = CalibrationConfig(alpha=args.alpha, check_windows=200, check_window_sizes=(50, 100, 250))
    names = [name for members in families.values() for name in members]
    decisions = [*families, "combined", "by_family"]
    alarms = defaultdict(list)  # (decision, size) -> per split, the share of its healthy windows that paged
    detected = defaultdict(list)  # (decision, shift, share, size) -> fired per window
    held_out = defaultdict(list)  # size -> per split, the calibration's own held-out false-alarm rate
    spent = [0.0, 0]  # seconds deciding, windows decided
    count = len(files)
    for split in range(args.splits):
        print(f"split {split + 1}/{args.splits}", file=sys.stderr, flush=True)
        order = rng.permutation(count)
        reference, production = order[: count // 2], order[count // 2 :]
        fit_part = reference[: round(reference.size * config.fit_share)]
        calibration_part = reference[fit_part.size :]
        fitted = fit_split(healthy_pool, fit_part, head)
        healthy = split_values(healthy_pool, head, fitted)
        shifted = {label: split_values(values, head, fitted) for label, values in shifted_pools.items()}
        calibration = calibrate(
            {n: healthy[n][calibration_part] for n in names}, model_id="eval", config=config, fitted_scores=fitted
        )
        for check in calibration.false_alarm_checks:
            held_out[check.window_size].append(check.rate)

        def decide(
            picked: np.ndarray, pool: dict | None = None, replaced=None, healthy=healthy, calibration=calibration
        ) -> dict[str, bool]:
            window = {n: healthy[n][picked] for n in names}
            if pool is not None:
                window = {n: np.concatenate([values, pool[n][replaced]]) for n, values in window.items()}
            started = time.perf_counter()
            decision = calibration.decide({"": window})
            spent[0] += time.perf_counter() - started
            spent[1] += 1
            fired = {family: family_fired(decision, set(members), args.alpha) for family, members in families.items()}
            return {
                **fired,
                "combined": decision.is_drift,
                "by_family": by_family_fired(decision, families, args.alpha),
            }

        for size in args.sizes:
            paged = defaultdict(int)
            for _ in range(args.healthy):
                for name, fired in decide(rng.choice(production, size, replace=False)).items():
                    paged[name] += fired
            for name in decisions:
                alarms[(name, size)].append(paged[name] / args.healthy)
            for shift, values in shifted.items():
                for share in SHARES:
                    replaced_count = round(share * size)
                    for _ in range(args.windows):
                        picked = rng.choice(production, size, replace=False)
                        kept, others = picked[replaced_count:], picked[:replaced_count]
                        # A corrupted set pairs with the samples: corrupt other production images, never the kept.
                        new_kind = rng.choice(len(values[PREDICTION]), replaced_count, replace=False)
                        replaced = others if shift in paired else new_kind
                        for name, fired in decide(kept, values, replaced).items():
                            detected[(name, shift, share, size)].append(fired)
    costs = decision_costs(calibration, families, healthy, shifted["dtd"], production, rng)
    separations = best_separations(calibration, healthy, shifted, production)
    report(args, decisions, alarms, held_out, detected, accuracy, spent[0] / spent[1], shifted_pools, costs)
    print("\nper image, how far each shift's images lie from healthy ones (last split; AUROC, 0.5 = not at all):")
    for shift, best in separations.items():
        print(f"  {shift:<22}" + ", ".join(f"{name} {value:.2f}" for name, value in best))


def best_separations(calibration, healthy, shifted, production, top: int = 3) -> dict[str, list[tuple[str, float]]]:
    """Per shift, the values that separate its images from healthy production images best, one image at a time
    (AUROC, each value read with its out-of-distribution side): what bounds how often a window of a few shifted
    images among healthy ones can be caught at all."""
    best = {}
    for shift, values in shifted.items():
        aurocs = []
        for name in calibration.scalar_scores:
            reference = calibration.reference(name)
            inside = reference.oriented(healthy[name][production])
            outside = reference.oriented(values[name])
            inside, outside = inside[np.isfinite(inside)], outside[np.isfinite(outside)]
            if inside.size and outside.size:
                aurocs.append((name, auroc(inside, outside)))
        best[shift] = sorted(aurocs, key=lambda entry: -entry[1])[:top]
    return best


def decision_costs(calibration, families, healthy, shifted, production, rng, repeats: int = 5) -> dict:
    """Seconds to decide a window, healthy and with a quarter replaced by DTD textures (whose permutation tests run
    to the end): per family for one segment of 100 images, and with every family for 4 segments of 100 (each
    falling back to the global reference)."""
    names = [name for members in families.values() for name in members]

    def window(size: int, pool: dict | None) -> dict[str, np.ndarray]:
        values = {n: healthy[n][rng.choice(production, size, replace=False)] for n in names}
        if pool is None:
            return values
        replaced = rng.choice(len(pool[PREDICTION]), size // 4, replace=False)
        return {n: np.concatenate([column[size // 4 :], pool[n][replaced]]) for n, column in values.items()}

    def timed(decide) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            decide()
        return (time.perf_counter() - started) / repeats

    costs = {}
    for label, pool in (("healthy", None), ("shifted", shifted)):
        for family, members in families.items():
            references = {"": {n: calibration.reference(n) for n in members if n in calibration.scores}}
            alpha = calibration.config.alpha

            def decide_family(pool=pool, references=references, alpha=alpha) -> None:
                decide_window({"": window(100, pool)}, references, alpha=alpha)

            costs[(family, label)] = timed(decide_family)
        segments = lambda pool=pool: {segment: window(100, pool) for segment in ("a", "b", "c", "d")}  # noqa: E731
        costs[("4 segments", label)] = timed(lambda segments=segments: calibration.decide(segments()))
    return costs


def pool_values(table, heads: dict[str, np.ndarray], names: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """A pool's pipeline-measured values (image properties, predictions) by sorted file name, with its head outputs
    aligned to them (``features`` and ``logits``, from which every split computes its fitted and unfitted scores)."""
    files = [Path(uri).name for uri in table.column("uri").to_pylist()]
    order = np.argsort(files)
    files = [files[index] for index in order]
    measured = table_values(table, names)
    values = {name: measured[name][order] for name in names}
    position = {name: index for index, name in enumerate(heads["files"].tolist())}
    if sorted(position) != files:
        raise SystemExit("the cached head outputs do not pair with the pipeline's scores; delete the cache")
    aligned = np.array([position[name] for name in files])
    return files, {**values, "features": heads["features"][aligned], "logits": heads["logits"][aligned]}


def split_values(pool: dict[str, np.ndarray], head: tuple, fitted: dict, temperature: float = 1.0) -> dict:
    """Every decision value of a pool under one split's fitted states: the registered scores computed from the head
    outputs, the projected features, and the pipeline's properties and predictions."""
    weight, bias = head
    outputs = HeadOutputs(
        torch.from_numpy(pool["features"]), torch.from_numpy(pool["logits"]), temperature, weight, bias
    )
    scores = {
        name: score(outputs, fitted).numpy() for name, score in registered_scores().items() if name in decision_scores()
    }
    projected = FeatureProjection.from_state(fitted[FEATURES])(outputs.features).numpy()
    kept = {name: values for name, values in pool.items() if name not in ("features", "logits")}
    return {**kept, **scores, FEATURES: projected}


def fit_split(pool: dict[str, np.ndarray], fit_part: np.ndarray, head: tuple) -> dict:
    """What the scores that learn, and the projection, learn on this split's fit part of the reference."""
    weight, bias = head
    outputs = HeadOutputs(
        torch.from_numpy(pool["features"][fit_part]), torch.from_numpy(pool["logits"][fit_part]), 1.0, weight, bias
    )
    fitted = {name: score.fit(outputs) for name, score in registered_scores().items() if score.fit is not None}
    return {**fitted, FEATURES: fit_projection(outputs.features)}


def family_fired(decision, members: set[str], alpha: float) -> bool:
    """Whether a family's tests alone, Holm-corrected among themselves, fire on this window."""
    p_values = [record.p_value for record in decision.tests if record.score in members]
    return bool(p_values) and any(holm(p_values, alpha)[1])


def by_family_fired(decision, families: dict[str, list[str]], alpha: float) -> bool:
    """The alternative combination: each family's Bonferroni-combined p-value, then Holm across the families."""
    combined = []
    for members in families.values():
        p_values = [record.p_value for record in decision.tests if record.score in members]
        if p_values:
            combined.append(min(1.0, len(p_values) * min(p_values)))
    return any(holm(combined, alpha)[1])


def split_interval(rates: list[float]) -> tuple[float, float, float]:
    """Mean rate and its 95% interval across splits: windows of one split share a reference, so their alarms are
    not independent, and a binomial interval over all windows would be too narrow; the splits are."""
    values = np.asarray(rates)
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0
    return float(values.mean()), max(0.0, float(values.mean() - half)), float(values.mean() + half)


def report(args, decisions, alarms, held_out, detected, accuracy, per_window, shifted_pools, costs) -> None:
    print(f"\n{args.splits} reference/production splits of the ImageNet samples; alpha = {args.alpha}")
    print(f"false alarms per 100 healthy windows ({args.healthy} a split and size; 95% interval across splits):")
    for name in decisions:
        cells = []
        for size in args.sizes:
            mean, low, high = split_interval(alarms[(name, size)])
            cells.append(f"n={size}: {100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]")
        print(f"  {name:<12} " + "   ".join(cells))
    cells = []
    for size in sorted(held_out):
        mean, low, high = split_interval(held_out[size])
        cells.append(f"n={size}: {100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]")
    print(f"  {'(held out)':<12} " + "   ".join(cells) + "   <- the calibration's own check of the combined rule")
    others = [size for size in args.sizes if size != 100]
    print("\ndetected, % of shifted windows at n=100 per family and decision; the combined decision at other sizes")
    header = "".join(f"{label:>8}" for label in ("scores", "props", "feats", "preds", "all", "by_fam"))
    header += "".join(f"{f'n={size}':>8}" for size in others)
    print(f"{'shift':<22}{'top-1':>7}{'share':>7}{header}")
    for shift in shifted_pools:
        for share in SHARES:
            rates = "".join(f"{100 * np.mean(detected[(name, shift, share, 100)]):>8.0f}" for name in decisions)
            rates += "".join(f"{100 * np.mean(detected[('combined', shift, share, size)]):>8.0f}" for size in others)
            shown = f"{accuracy[shift]:.2f}" if shift in accuracy else "-"
            print(f"{shift:<22}{shown:>7}{share:>7.0%}{rates}")
    print(f"\nmodel top-1 on the healthy samples: {accuracy['healthy']:.3f}")
    print(f"deciding one window (one segment, every family), ms: {1000 * per_window:.1f}")
    cells = [
        f"{family} {1000 * costs[(family, 'healthy')]:.0f} / {1000 * costs[(family, 'shifted')]:.0f}"
        for family in dict.fromkeys(family for family, _ in costs)
    ]
    print("deciding a window, ms, healthy / a quarter DTD (a family: one segment of 100; 4 segments: every family,")
    print("100 images each): " + ", ".join(cells))


if __name__ == "__main__":
    main()
