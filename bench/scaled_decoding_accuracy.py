"""How far decoding JPEGs at a reduced scale moves the scores, on 1080p frames made from ../shared/data.

Usage: python bench/scaled_decoding_accuracy.py [--frames DIR] [--count N] [--model SPEC]

The ImageNet samples (in distribution), the DTD textures and the EuroSAT tiles (shifted) are made into 1920x1080
JPEGs (bench/camera_frames.py, cached in --frames) and scored through Scorer.score_encoded, the pipeline's model
handler path, with and without ScoringSettings.scaled_jpeg_decode. It prints the statistic fp16 is held to
(GradNorm's per-image relative difference, median and max, against 5e-3), the same for the other scores, and each
score's AUROC in distribution against each shifted set, both ways (unchanged means equal to three decimals).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from bench.camera_frames import camera_frames  # noqa: E402
from bench.common import SHARED  # noqa: E402
from scoring import DEFAULT_MODEL, load_scorer  # noqa: E402
from scoring.separation import auroc  # noqa: E402

# fp16's mark (README, "Scoring on a GPU"): GradNorm within this relative difference on every image.
TOLERANCE = 5e-3
SETS = {
    "imagenet": SHARED / "imagenet-samples",
    "dtd": SHARED / "ood" / "dtd-textures",
    "eurosat": SHARED / "ood" / "eurosat",
}
SCORES = ("gradnorm", "energy", "msp", "maxlogit", "scale")


def scored(model: str, frames: dict[str, list[Path]], *, scaled: bool) -> dict[str, dict[str, np.ndarray]]:
    scorer = load_scorer(model, device="cpu", scaled_jpeg_decode=scaled)
    columns = {}
    for name, paths in frames.items():
        outcomes = scorer.score_encoded([path.read_bytes() for path in paths], sources=[str(path) for path in paths])
        rejected = [outcome for outcome in outcomes if not isinstance(outcome, dict)]
        if rejected:
            sys.exit(f"{len(rejected)} frames of {name} rejected, first: {rejected[0]}")
        columns[name] = {score: np.array([outcome[score] for outcome in outcomes]) for score in (*SCORES, "pred")}
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=Path, default=Path(tempfile.gettempdir()) / "gradwatch-1080p")
    parser.add_argument("--count", type=int, default=None, help="images per set (default: all)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    frames = {name: camera_frames(folder, args.frames / folder.name, args.count) for name, folder in SETS.items()}
    print(f"1080p frames: {', '.join(f'{name} {len(paths)}' for name, paths in frames.items())} in {args.frames}")
    full, reduced = (scored(args.model, frames, scaled=scaled) for scaled in (False, True))

    print(f"\nper-image relative difference, scaled against full decode (all {sum(map(len, frames.values()))} frames)")
    for score in SCORES:
        exact = np.concatenate([full[name][score] for name in frames])
        approx = np.concatenate([reduced[name][score] for name in frames])
        relative = np.abs(approx - exact) / np.abs(exact)
        mark = f"  (mark {TOLERANCE:.0e}: {'within' if relative.max() <= TOLERANCE else 'missed'})"
        print(
            f"  {score:<9} median {np.median(relative):.1e}, p99 {np.quantile(relative, 0.99):.1e}, "
            f"max {relative.max():.1e}{mark if score == 'gradnorm' else ''}"
        )
    predictions = np.concatenate([full[name]["pred"] == reduced[name]["pred"] for name in frames])
    print(f"  same predicted class: {predictions.mean():.4f}")

    print("\nAUROC, ImageNet frames against each shifted set: full decode -> scaled decode")
    unchanged = True
    for shifted in ("dtd", "eurosat"):
        for score in SCORES:
            before = auroc(full["imagenet"][score], full[shifted][score])
            after = auroc(reduced["imagenet"][score], reduced[shifted][score])
            same = round(before, 3) == round(after, 3)
            unchanged &= same
            print(f"  {shifted:<8}{score:<9} {before:.4f} -> {after:.4f}{'' if same else '  (moved)'}")
    print(f"  unchanged to three decimals for every score: {unchanged}")


if __name__ == "__main__":
    main()
