"""Simulated production windows: what each family of tests catches, how fast a slow drift pages across windows,
and how often healthy windows page, with a production-period reference and with a mismatched one.

Usage: python bench/eval_drift.py [--out DIR] [--splits 10] [--parts PART...] [--severities 3]
                                  [--corruptions NAME...] [--sizes 50 100 250] [--windows 10] [--healthy 60]
                                  [--sequences 4] [--cap 20] [--run-windows 300] [--check-windows 100] [--model SPEC]

Needs ../shared/data and the `bench` extra (`pip install -e ".[bench]"`: ImageNet-C's own corruptions, from the
`imagecorruptions` package). Everything is scored once by the Beam pipeline (gradwatch score) and cached in
--out, with each image's head outputs: the 1000 ImageNet samples (in distribution), DTD textures and EuroSAT tiles
(new kinds of input), and every ImageNet sample under seven ImageNet-C corruptions (each saved as a JPEG at its
source's own quality, so the file format tells nothing). Then, for each of --splits random halvings of the ImageNet
samples, one half is the reference (30% of it fits ViM and the feature projection, the rest calibrates, as
`gradwatch calibrate` splits it, with each image's label) and the other half is production. The parts (--parts,
default all; each prints the seconds it took):

- detection: healthy windows drawn from the production half only (any alarm is a false alarm), and shifted
  windows, a share (10%, 25%, 50%) replaced by new kinds of input or by the corrupted versions of other production
  images. Every window is decided once with every test (the decision gradwatch makes: Holm over all of them,
  "all"); each family's own decision (scores, image properties, the MMD on the projected features, the predicted
  classes) is Holm over its tests' p-values alone, and "by_fam" is the alternative combination, each family's
  Bonferroni p-value then Holm across families. Printed: false alarms per 100 healthy windows with their 95%
  interval across splits and the calibration's own held-out check, detection per (shift, share) and decision at
  windows of 100 (the combined one at 50 and 250 too), the model's top-1 on each set, what deciding costs.
- sequential: sequences of windows of 100 in which, after the healthy windows the CUSUM's burn-in centres its
  charts on, 5%, 8% or 10% of every window is shifted, run as the live monitor runs them (each window's decision,
  then the calibration's CUSUM over its evidence): windows until the first page, by the decision or the CUSUM, and
  by the decision alone (all a shift present since before the burn-in gets: the charts are centred on it).
- run_length: one long sequence of healthy windows per split after the burn-in: the CUSUM's false signals and mean
  run length against what the calibration's simulation stated, and the pages of decision and CUSUM together.
- mismatch: healthy windows against the production-period reference, against a subset of it as small as the
  mismatched one, and against the reference restricted to the animal classes (0-397) while production holds all
  1000; and the verdict of the reference check (scoring.reference_check) on production images the windows do not
  use.
- severity: of windows with a quarter shifted that are caught, how many are rated page and how many warn, with
  the labelled reference and without labels; and the same for the false alarms of the run_length part.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from bench.common import SHARED, head_outputs, score_folder_with_pipeline  # noqa: E402
from pipelines.records import table_values  # noqa: E402
from pipelines.store import OutputStore  # noqa: E402
from scoring import DEFAULT_MODEL, decision_scores, load_model, registered_scores  # noqa: E402
from scoring.accuracy import CONFIDENCE, AccuracyModel, fit_accuracy  # noqa: E402
from scoring.calibration import PREDICTION, Calibration, CalibrationConfig, calibrate  # noqa: E402
from scoring.drift import decide_window, holm  # noqa: E402
from scoring.features import FEATURES, FeatureProjection, fit_projection  # noqa: E402
from scoring.jpeg import read_jpeg_header  # noqa: E402
from scoring.properties import registered_properties  # noqa: E402
from scoring.reference_check import check_reference  # noqa: E402
from scoring.scores import HeadOutputs  # noqa: E402
from scoring.separation import auroc  # noqa: E402
from scoring.sequential import ChartState, window_evidence  # noqa: E402

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


@dataclass(frozen=True)
class Pools:
    """Every pool the benches draw windows from, as the pipeline scored it, by sorted file name.

    Attributes:
        files: the ImageNet samples' file names, the order of ``healthy`` and of every paired set.
        healthy: the ImageNet samples' values (see :func:`pool_values`).
        shifted: shift name -> its pool's values: new kinds of input, and corrupted versions of the samples.
        paired: the shifts whose images are the samples corrupted, one to one with ``files``.
        correct: "healthy" and each shift -> per image, 1.0 when the model's prediction is its true class (a new
            kind of input has no ImageNet class, so none is right).
        accuracy: the same names -> the model's top-1 on that pool.
        classes: each ImageNet sample's true class.
        head: the model's final layer, (weight, bias), from which every split computes its scores.
    """

    files: list[str]
    healthy: dict[str, np.ndarray]
    shifted: dict[str, dict[str, np.ndarray]]
    paired: set[str]
    correct: dict[str, np.ndarray]
    accuracy: dict[str, float]
    classes: np.ndarray
    head: tuple


@dataclass(frozen=True)
class Split:
    """One split's calibration, and every pool's values under the states it fitted (ViM, the projection).

    Attributes:
        calibration_part: the reference images calibrate() was given (the reference less its fit part).
    """

    calibration: Calibration
    healthy: dict[str, np.ndarray]
    shifted: dict[str, dict[str, np.ndarray]]
    calibration_part: np.ndarray


def bench_config(alpha: float = 0.01, check_windows: int = 200) -> CalibrationConfig:
    return CalibrationConfig(alpha=alpha, check_windows=check_windows, check_window_sizes=(50, 100, 250))


def value_names() -> list[str]:
    """Every value a window is decided on, by family."""
    return [name for members in families().values() for name in members]


def families() -> dict[str, list[str]]:
    return {
        "scores": decision_scores(),
        "properties": list(registered_properties()),
        "features": [FEATURES],
        "predictions": [PREDICTION],
    }


def cached_scores(folder: Path, out: Path, model: str, needed: list[str]) -> pa.Table:
    """A pool's scores table: the cached one whenever it has the columns these benches read from it (properties and
    predictions; every score is computed again per split from the head outputs), so a cache scored before a score
    was registered is not scored again (minutes per 1000 images) for a column no split reads."""
    if (out / "scores").exists():
        table = OutputStore(str(out)).read_table("scores")
        if {"uri", *needed} <= set(table.column_names):
            return table
    return score_folder_with_pipeline(folder, out, model)


def load_pools(out: Path, model: str, severities: list[int], corruptions: list[str]) -> Pools:
    """Score (or read from the cache in ``out``) the ImageNet samples, the new kinds of input and every corrupted
    set, with their head outputs and each image's correctness."""
    measured = [*registered_properties(), PREDICTION]

    def pool(folder: Path, label: str) -> tuple[list[str], dict[str, np.ndarray]]:
        table = cached_scores(folder, out / label, model, measured)
        return pool_values(table, head_outputs(folder, out / "heads" / f"{label}.npz", model), measured)

    files, healthy = pool(SHARED / "imagenet-samples", "imagenet-samples")
    with (SHARED / "imagenet-samples" / "labels.csv").open() as file:
        labels = {row["file"]: int(row["class_index"]) for row in csv.DictReader(file)}
    if set(files) - set(labels):
        raise SystemExit(f"{len(set(files) - set(labels))} ImageNet samples have no label in labels.csv")
    classes = np.array([labels[name] for name in files])
    correct = {"healthy": (healthy[PREDICTION] == classes).astype(np.float64)}
    shifted: dict[str, dict[str, np.ndarray]] = {}
    paired: set[str] = set()
    for kind, folder in NEW_KINDS.items():
        shifted[kind] = pool(folder, kind)[1]
        correct[kind] = np.zeros(len(shifted[kind][PREDICTION]))
    for severity in severities:
        for name in corruptions:
            label = f"{name}-{severity}"
            images = out / "images" / label
            write_corrupted(SHARED / "imagenet-samples", images, name, severity)
            corrupted_files, shifted[label] = pool(images, f"scores-{label}")
            if corrupted_files != files:
                raise SystemExit(f"corrupted set {label} does not pair with the ImageNet samples one to one")
            correct[label] = (shifted[label][PREDICTION] == classes).astype(np.float64)
            paired.add(label)
    head_layer = load_model(model).head
    head = (head_layer.weight.detach().double(), head_layer.bias.detach().double())
    accuracy = {name: float(values.mean()) for name, values in correct.items()}
    return Pools(files, healthy, shifted, paired, correct, accuracy, classes, head)


def split_orders(count: int, splits: int, seed: int = 0) -> list[np.ndarray]:
    """Each split's order of the ImageNet samples (first half the reference): from a generator of their own, so
    split k is the same split in every bench and whichever parts of a bench run."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(count) for _ in range(splits)]


def calibrate_split(
    pools: Pools, reference: np.ndarray, config: CalibrationConfig, *, shifted: bool = True, labelled: bool = True
) -> Split:
    """Calibrate on ``reference`` (indices into the samples) as ``gradwatch calibrate`` does: its first
    ``fit_share`` fits ViM and the projection, the rest calibrates, with each image's correctness as its label."""
    fit_part = reference[: round(reference.size * config.fit_share)]
    calibration_part = reference[fit_part.size :]
    fitted = fit_split(pools.healthy, fit_part, pools.head)
    healthy = split_values(pools.healthy, pools.head, fitted)
    shifted_values = {
        label: split_values(values, pools.head, fitted) for label, values in pools.shifted.items() if shifted
    }
    calibration = calibrate(
        {name: healthy[name][calibration_part] for name in value_names()},
        model_id="eval",
        config=config,
        fitted_scores=fitted,
        correct=pools.correct["healthy"][calibration_part] if labelled else None,
    )
    return Split(calibration, healthy, shifted_values, calibration_part)


def draw_window(
    rng: np.random.Generator, production: np.ndarray, size: int, share: float, pool_size: int, paired: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A window's kept production images, and the shifted pool's images that replace ``share`` of it: for a
    corrupted set, the corrupted versions of other production images, never of the kept ones."""
    count = round(share * size)
    picked = rng.choice(production, size, replace=False)
    new_kind = rng.choice(pool_size, count, replace=False)
    return picked[count:], (picked[:count] if paired else new_kind)


def window_values(
    healthy: dict[str, np.ndarray],
    kept: np.ndarray,
    shifted: dict[str, np.ndarray] | None = None,
    replaced: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    window = {name: healthy[name][kept] for name in value_names()}
    if shifted is None:
        return window
    return {name: np.concatenate([values, shifted[name][replaced]]) for name, values in window.items()}


PARTS = ("detection", "sequential", "run_length", "mismatch", "severity")
SEQUENTIAL_SHARES = (0.05, 0.08, 0.10)
# ImageNet's classes 0-397 are animals: the reference a team that labelled an animal pilot's images would have.
ANIMAL_CLASSES = 398
# Production images the reference check reads, set apart from those healthy windows are drawn from: a team checks
# its reference on one period and monitors the next.
CHECK_SAMPLE = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where images and pipeline outputs go (a cache)")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure")
    parser.add_argument("--severities", type=int, nargs="+", default=[3])
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(WINDOW_SIZES), help="window sizes (100 among them)"
    )
    parser.add_argument("--windows", type=int, default=10, help="shifted windows per (split, shift, share, size)")
    parser.add_argument("--healthy", type=int, default=60, help="healthy windows per (split, size) or reference")
    parser.add_argument("--sequences", type=int, default=4, help="sequences per (split, shift, share)")
    parser.add_argument("--cap", type=int, default=20, help="windows a sequence runs before it counts as missed")
    parser.add_argument("--run-windows", type=int, default=300, help="healthy windows in one sequence per split")
    parser.add_argument("--check-windows", type=int, default=100, help="the reference check's windows per size")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gradwatch-drift-"))
    print(f"scoring every pool through the pipeline into {out}")
    pools = load_pools(out, args.model, args.severities, args.corruptions)
    config = bench_config(args.alpha)
    detection = Detection(args)
    results: dict[str, dict] = {part: defaultdict(list) for part in PARTS}
    spent: dict[str, float] = defaultdict(float)
    count = len(pools.files)
    for split, order in enumerate(split_orders(count, args.splits)):
        print(f"split {split + 1}/{args.splits}", file=sys.stderr, flush=True)
        reference, production = order[: count // 2], order[count // 2 :]
        started = time.perf_counter()
        current = calibrate_split(pools, reference, config)
        spent["calibration"] += time.perf_counter() - started
        for part in args.parts:
            started = time.perf_counter()
            if part == "detection":
                detection.run(current, production, pools)
            elif part == "sequential":
                sequential_delays(current, production, pools, args, split, results[part])
            elif part == "run_length":
                healthy_run(current, production, args, split, results[part])
            elif part == "mismatch":
                mismatched(pools, current, reference, production, config, args, split, results[part])
            else:
                rate_severity(current, production, pools, args, split, results[part])
            spent[part] += time.perf_counter() - started
    if "detection" in args.parts:
        detection.report(current, production, pools)
    if "sequential" in args.parts:
        report_sequential(results["sequential"], pools, args)
    if "run_length" in args.parts:
        report_run_length(results["run_length"], args)
    if "mismatch" in args.parts:
        report_mismatch(results["mismatch"], args)
    if "severity" in args.parts:
        report_severity(results["severity"], results["run_length"], pools, args)
    print("\nseconds spent, all splits: " + ", ".join(f"{part} {seconds:.0f}" for part, seconds in spent.items()))


class Detection:
    """What each family and decision catches per (shift, share, size), and how often healthy windows page."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = np.random.default_rng(1)
        self.alarms = defaultdict(list)  # (decision, size) -> per split, the share of its healthy windows that paged
        self.detected = defaultdict(list)  # (decision, shift, share, size) -> fired per window
        self.held_out = defaultdict(list)  # size -> per split, the calibration's own held-out false-alarm rate
        self.spent = [0.0, 0]  # seconds deciding, windows decided
        self.decisions = [*families(), "combined", "by_family"]

    def decide(self, calibration: Calibration, window: dict[str, np.ndarray]) -> dict[str, bool]:
        alpha = self.args.alpha
        started = time.perf_counter()
        decision = calibration.decide({"": window})
        self.spent[0] += time.perf_counter() - started
        self.spent[1] += 1
        fired = {family: family_fired(decision, set(members), alpha) for family, members in families().items()}
        return {**fired, "combined": decision.is_drift, "by_family": by_family_fired(decision, families(), alpha)}

    def run(self, split: Split, production: np.ndarray, pools: Pools) -> None:
        args, rng = self.args, self.rng
        for check in split.calibration.false_alarm_checks:
            self.held_out[check.window_size].append(check.rate)
        for size in args.sizes:
            paged = defaultdict(int)
            for _ in range(args.healthy):
                window = window_values(split.healthy, rng.choice(production, size, replace=False))
                for name, fired in self.decide(split.calibration, window).items():
                    paged[name] += fired
            for name in self.decisions:
                self.alarms[(name, size)].append(paged[name] / args.healthy)
            for shift, values in split.shifted.items():
                for share in SHARES:
                    for _ in range(args.windows):
                        kept, replaced = draw_window(
                            rng, production, size, share, len(values[PREDICTION]), shift in pools.paired
                        )
                        window = window_values(split.healthy, kept, values, replaced)
                        for name, fired in self.decide(split.calibration, window).items():
                            self.detected[(name, shift, share, size)].append(fired)

    def report(self, split: Split, production: np.ndarray, pools: Pools) -> None:
        """The tables, then (on the last split) what deciding costs and how far each shift's images lie."""
        costs = decision_costs(split.calibration, families(), split.healthy, split.shifted["dtd"], production, self.rng)
        separations = best_separations(split.calibration, split.healthy, split.shifted, production)
        report(
            self.args, self.decisions, self.alarms, self.held_out, self.detected, pools.accuracy,
            self.spent[0] / self.spent[1], pools.shifted, costs,
        )  # fmt: skip
        print("\nper image, how far each shift's images lie from healthy ones (last split; AUROC, 0.5 = not at all):")
        for shift, best in separations.items():
            print(f"  {shift:<22}" + ", ".join(f"{name} {value:.2f}" for name, value in best))


def paged_step(calibration: Calibration, window: dict[str, np.ndarray], charts: ChartState):
    """One window in a live monitor: its decision, and the CUSUM's charts after it (the decision with the charts:
    drift when either fired)."""
    decision = calibration.decide({"": window})
    step = calibration.sequential.step(charts, window_evidence(decision.tests, ""))
    return decision, step, calibration.with_sequential(decision, {"": step})


def burnt_in(split: Split, production: np.ndarray, rng: np.random.Generator) -> ChartState:
    """The charts after the healthy windows a threshold version's CUSUM centres itself on, as monitoring begins."""
    charts = ChartState()
    for _ in range(split.calibration.sequential.burn_in):
        window = window_values(split.healthy, rng.choice(production, 100, replace=False))
        charts = paged_step(split.calibration, window, charts)[1].state
    return charts


def sequential_delays(split: Split, production, pools: Pools, args, index: int, results: dict) -> None:
    """Sequences in which, after the CUSUM's burn-in on healthy windows, a share of every window is shifted: windows
    until the first page (the window's decision or the CUSUM), and until the window's decision alone pages; None:
    not by the cap. Sequence b of every shift and share starts from burn-in b, which bounds the cost (a burn-in is
    24 decided windows) and leaves the sequences of one shift and share independent."""
    rng = np.random.default_rng((2, index))
    calibration = split.calibration
    starts = [burnt_in(split, production, rng) for _ in range(args.sequences)]
    for shift, values in split.shifted.items():
        for share in SEQUENTIAL_SHARES:
            for charts in starts:
                first_page, first_decision, level = None, None, None
                for t in range(1, args.cap + 1):
                    kept, replaced = draw_window(
                        rng, production, 100, share, len(values[PREDICTION]), shift in pools.paired
                    )
                    decision, step, combined = paged_step(
                        calibration, window_values(split.healthy, kept, values, replaced), charts
                    )
                    charts = step.state
                    if combined.is_drift and first_page is None:
                        first_page, level = t, combined.severity[""].level
                    if decision.is_drift:
                        first_decision = t
                        break  # the combined rule paged then too, if not before
                results[(shift, share, "combined")].append(first_page)
                results[(shift, share, "decision")].append(first_decision)
                results[(shift, share, "level")].append(level)
    results["limit"].append(calibration.sequential.limit)
    results["burn_in"].append(calibration.sequential.burn_in)


def healthy_run(split: Split, production, args, index: int, results: dict) -> None:
    """A long sequence of healthy production windows through the live monitor, after its burn-in: the CUSUM's false
    signals, the window decision's false alarms, and the pages of either, with the severity each page was given."""
    rng = np.random.default_rng((3, index))
    calibration = split.calibration
    unlabelled = fit_accuracy(split.healthy[CONFIDENCE][split.calibration_part], seed=calibration.config.seed)
    charts = burnt_in(split, production, rng)
    signals, alarms, pages = 0, 0, 0
    for _ in range(args.run_windows):
        window = window_values(split.healthy, rng.choice(production, 100, replace=False))
        decision, step, combined = paged_step(calibration, window, charts)
        charts = step.state
        signals += step.signalled
        alarms += decision.is_drift
        pages += combined.is_drift
        if decision.is_drift:
            results["decision levels"].append(levels(calibration, unlabelled, decision, window[CONFIDENCE]))
        if step.signalled:
            results["cusum levels"].append(levels(calibration, unlabelled, combined, window[CONFIDENCE]))
            results["charts"].append(f"{step.chart} (split {index + 1})")
        if combined.is_drift:
            # A reason starts with what reached the policy: "accuracy likely down..." or "N% of images outside...".
            results["reasons"].extend(
                "accuracy" if reason.startswith("accuracy") else "outlier rate"
                for reason in combined.severity[""].reasons
                if combined.severity[""].level == "page"
            )
    results["signals"].append(signals)
    results["alarms"].append(alarms)
    results["pages"].append(pages)
    results["stated"].append(calibration.sequential.run_length)
    results["limit"].append(calibration.sequential.limit)


def levels(calibration: Calibration, unlabelled: AccuracyModel, decision, confidences: np.ndarray) -> tuple[str, str]:
    """A drift's severity as rated with the labelled reference (ATC's accuracy), and as a calibration made without
    labels would rate it (the fall in confidence): a team without labels gets the second."""
    fired = sorted({test.score for test in decision.fired_in("")})
    effects = [effect for effect in decision.effects if effect.segment == ""]
    blind = calibration.severity.assess(fired=fired, effects=effects, accuracy=unlabelled.estimate(confidences))
    return decision.severity[""].level, blind.level


def rate_severity(split: Split, production, pools: Pools, args, index: int, results: dict) -> None:
    """Windows of 100 with a quarter shifted: how the caught ones are rated, page or warn."""
    rng = np.random.default_rng((4, index))
    calibration = split.calibration
    unlabelled = fit_accuracy(split.healthy[CONFIDENCE][split.calibration_part], seed=calibration.config.seed)
    for shift, values in split.shifted.items():
        for _ in range(args.windows):
            kept, replaced = draw_window(rng, production, 100, 0.25, len(values[PREDICTION]), shift in pools.paired)
            window = window_values(split.healthy, kept, values, replaced)
            decision = calibration.decide({"": window})
            results[(shift, "windows")].append(1)
            if decision.is_drift:
                results[shift].append(levels(calibration, unlabelled, decision, window[CONFIDENCE]))


def mismatched(pools: Pools, split: Split, reference, production, config, args, index: int, results: dict) -> None:
    """Healthy production windows decided against the production-period reference, against a random subset of it
    as small as the mismatched one (what size alone costs), and against the reference restricted to the animal
    classes; and what the reference check says of each, on production images the windows do not use."""
    rng = np.random.default_rng((5, index))
    check_sample, window_pool = production[:CHECK_SAMPLE], production[CHECK_SAMPLE:]
    animals = reference[pools.classes[reference] < ANIMAL_CLASSES]
    references = {
        "production period": split,
        "same period, as small": calibrate_split(
            pools, rng.choice(reference, animals.size, replace=False), config, shifted=False
        ),
        f"animals only (classes 0-{ANIMAL_CLASSES - 1})": calibrate_split(pools, animals, config, shifted=False),
    }
    picks = [rng.choice(window_pool, 100, replace=False) for _ in range(args.healthy)]
    for name, current in references.items():
        calibration = current.calibration
        alarms, fired = 0, Counter()
        for picked in picks:
            decision = calibration.decide({"": window_values(current.healthy, picked)})
            alarms += decision.is_drift
            fired.update({test.score for test in decision.fired})
        check = check_reference(
            calibration,
            {value: current.healthy[value][check_sample] for value in value_names()},
            windows=args.check_windows,
        )
        held_out = {entry.window_size: entry.rate for entry in calibration.false_alarm_checks}
        results[name].append(
            {
                "images": current.calibration_part.size,
                "alarms": alarms / len(picks),
                "fired": fired,
                # At 50 images: the small references hold out too few images to check windows of 100.
                "held_out": held_out.get(50, math.nan),
                "check": check,
            }
        )
        if index == 0:
            print(f"  reference check, split 1, {name}: {check.summary()}", file=sys.stderr, flush=True)


def percentile_windows(delays: list[int | None], q: float, cap: int) -> str:
    """A percentile of windows to the first page, a sequence not caught by the cap counting as later than any."""
    ordered = sorted(delay if delay is not None else math.inf for delay in delays)
    value = ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
    return f">{cap}" if math.isinf(value) else f"{value:.0f}"


def report_sequential(results: dict, pools: Pools, args) -> None:
    limits = results["limit"]
    print(
        f"\nsequential detection: windows of 100; after the CUSUM's burn-in of {results['burn_in'][0]} healthy "
        f"windows, a share of every window shifted; {args.sequences} sequences a split, {args.splits} splits; CUSUM "
        f"limit {np.mean(limits):.2f} on average ({min(limits):.2f}-{max(limits):.2f}), allowance 1. Windows until "
        f"the first page (1 = the first shifted window), median / 90th percentile, and the share not paged within "
        f"{args.cap} windows:"
    )
    print(f"{'shift':<22}{'top-1':>7}{'share':>7}{'decision or CUSUM':>26}{'decision alone':>26}{'page/warn':>11}")
    for shift in pools.shifted:
        for share in SEQUENTIAL_SHARES:
            cells = []
            for rule in ("combined", "decision"):
                delays = results[(shift, share, rule)]
                missed = np.mean([delay is None for delay in delays])
                cells.append(
                    f"{percentile_windows(delays, 0.5, args.cap)} / {percentile_windows(delays, 0.9, args.cap)}, "
                    f"{missed:.0%} missed"
                )
            rated = [level for level in results[(shift, share, "level")] if level is not None]
            rating = f"{sum(level == 'page' for level in rated)}/{sum(level == 'warn' for level in rated)}"
            print(
                f"{shift:<22}{pools.accuracy.get(shift, math.nan):>7.2f}{share:>7.0%}{cells[0]:>26}{cells[1]:>26}"
                f"{rating:>11}"
            )


def report_run_length(results: dict, args) -> None:
    windows = args.run_windows * len(results["signals"])
    signals, alarms, pages = (int(np.sum(results[name])) for name in ("signals", "alarms", "pages"))
    # The exact Poisson interval on the count of signals: the windows are many, the signals rare.
    low = stats.chi2.ppf(0.025, 2 * signals) / 2 if signals else 0.0
    high = stats.chi2.ppf(0.975, 2 * signals + 2) / 2
    estimate = f"{windows / signals:.0f}" if signals else f"> {windows:.0f}"
    print(
        f"\nin control: {len(results['signals'])} sequences of {args.run_windows} healthy windows of 100 after the "
        f"CUSUM's burn-in (one per split, resampled from its production half), {windows} windows"
    )
    print(
        f"  CUSUM false signals: {signals}, {1000 * signals / windows:.2f} per 1000 windows "
        f"[{1000 * low / windows:.2f}, {1000 * high / windows:.2f}]; mean run length {estimate} windows "
        f"(95%: {windows / high:.0f} to {windows / low if low else math.inf:.0f}), against the calibrations' "
        f"stated {np.mean(results['stated']):.0f} (simulated; limits {np.mean(results['limit']):.2f} on average)"
    )
    per_split = ", ".join(str(count) for count in results["signals"])
    print(f"  signals per split: {per_split}; charts that signalled: " + ", ".join(
        f"{chart} {times}" for chart, times in Counter(results["charts"]).most_common()
    ))  # fmt: skip
    print(
        f"  window decision false alarms: {alarms}, {100 * alarms / windows:.2f} per 100 windows; pages of either "
        f"(decision or CUSUM): {pages}, {100 * pages / windows:.2f} per 100 windows"
    )


def report_mismatch(results: dict, args) -> None:
    print(
        f"\nfalse alarms with a mismatched reference: {args.healthy} healthy production windows of 100 a split "
        f"(drawn from {500 - CHECK_SAMPLE} production images), {args.splits} splits; the reference check on "
        f"{CHECK_SAMPLE} other production images ({args.check_windows} windows a size)"
    )
    print(
        f"{'reference':<32}{'images':>8}{'FA /100 [95% across splits]':>30}{'held-out n=50':>15}{'check warns':>13}"
        f"{'check pages /100':>18}"
    )
    for name, entries in results.items():
        mean, low, high = split_interval([entry["alarms"] for entry in entries])
        warned = sum(not entry["check"].representative for entry in entries)
        pages = np.mean([max(rate.rate for rate in entry["check"].page_rates) for entry in entries])
        print(
            f"{name:<32}{np.mean([entry['images'] for entry in entries]):>8.0f}"
            f"{f'{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]':>30}"
            f"{100 * np.nanmean([entry['held_out'] for entry in entries]):>15.1f}"
            f"{f'{warned}/{len(entries)}':>13}{100 * pages:>18.1f}"
        )
    for name, entries in results.items():
        named = Counter(value for entry in entries for value in entry["check"].most_off)
        print(f"  {name}: the check's values most off, splits naming each: " + ", ".join(
            f"{value} {times}" for value, times in named.most_common(6)
        ))  # fmt: skip
        fired = sum((entry["fired"] for entry in entries), Counter())
        print("    values whose tests fired in its false alarms, windows: " + ", ".join(
            f"{value} {times}" for value, times in fired.most_common(8)
        ) if fired else "    no false alarm")  # fmt: skip
        print(f"    split 1: {entries[0]['check'].summary()}")
        if entries[0]["check"].fix:
            print(f"    fix: {entries[0]['check'].fix}")


def report_severity(results: dict, run_length: dict, pools: Pools, args) -> None:
    print(
        f"\nseverity: windows of 100 with a quarter shifted ({args.windows} a split and shift); of those caught, "
        "rated page / warn, with the labelled reference (ATC) and as a calibration without labels would rate them"
    )
    print(f"{'shift':<22}{'top-1':>7}{'cost at 25%':>12}{'caught':>9}{'labelled: page/warn':>22}{'unlabelled':>12}")
    healthy = pools.accuracy["healthy"]
    for shift in pools.shifted:
        rated = results[shift]
        caught = len(rated) / len(results[(shift, "windows")])
        cells = [f"{sum(r[k] == 'page' for r in rated)}/{sum(r[k] == 'warn' for r in rated)}" for k in (0, 1)]
        cost = 0.25 * (healthy - pools.accuracy[shift])
        print(f"{shift:<22}{pools.accuracy[shift]:>7.2f}{cost:>12.3f}{caught:>9.0%}{cells[0]:>22}{cells[1]:>12}")
    if "run_length" not in args.parts:
        return
    for label, what in (("decision levels", "decision"), ("cusum levels", "CUSUM")):
        rated = run_length[label]
        cells = [f"{sum(r[k] == 'page' for r in rated)}/{sum(r[k] == 'warn' for r in rated)}" for k in (0, 1)]
        print(f"{f'false alarms ({what})':<41}{len(rated):>9}{cells[0]:>22}{cells[1]:>12}")
    print(
        "what made the false pages (decision or CUSUM) page, reasons: "
        + ", ".join(f"{reason} {times}" for reason, times in Counter(run_length["reasons"]).most_common())
    )


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
