"""Throughput of GradNorm: the paper's per-image backward pass vs the batched closed form vs a forward pass.

Usage: python bench/scoring.py [--images DIR] [--count N] [--batch-size B] [--model SPEC] [--device D]

All three run in one process on the same preprocessed images (decoding is not timed), alternating
rounds so that machine noise hits them alike; each rate is the median of its rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import images_per_second  # noqa: E402
from scoring import DEFAULT_MODEL, ImageDecodeError, Scorer, load_scorer  # noqa: E402
from scoring.reference import gradnorm_by_backward  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-samples"


def load_images(scorer: Scorer, folder: Path, count: int) -> torch.Tensor:
    tensors = []
    for path in sorted(folder.iterdir()):
        if len(tensors) == count:
            break
        try:
            tensors.append(scorer.preprocess(path))
        except ImageDecodeError:
            continue
    if not tensors:
        raise SystemExit(f"no images in {folder}; pass --images DIR")
    return torch.stack(tensors).to(scorer.device, memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=256, help="images for the batched runs")
    parser.add_argument("--paper-count", type=int, default=48, help="images for the per-image backward runs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--chunk", type=int, default=None, help="images per forward pass (default: the device's)")
    args = parser.parse_args()

    scorer = load_scorer(args.model, device=args.device, forward_chunk=args.chunk)
    images = load_images(scorer, args.images, args.count)
    paper_images = images[: args.paper_count]
    batches = images.split(args.batch_size)

    def paper() -> np.ndarray:
        return gradnorm_by_backward(scorer.model, scorer.head, paper_images)

    def closed_form() -> list[dict[str, np.ndarray]]:
        return [scorer.score(batch) for batch in batches]

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                for chunk in batch.split(scorer.forward_chunk or len(batch)):
                    scorer.model(chunk)

    exact = np.concatenate([scorer.score(batch)["gradnorm"] for batch in paper_images.split(args.batch_size)])
    worst = float(np.max(np.abs(exact - paper()) / paper()))

    rates: dict[str, list[float]] = {"paper": [], "closed_form": [], "forward": []}
    for _ in range(args.rounds):
        rates["paper"].append(images_per_second(paper, len(paper_images), scorer.device))
        rates["closed_form"].append(images_per_second(closed_form, len(images), scorer.device))
        rates["forward"].append(images_per_second(forward, len(images), scorer.device))
    median = {name: statistics.median(values) for name, values in rates.items()}

    print(f"model {scorer.model_id} on {scorer.device}, torch threads {torch.get_num_threads()}")
    print(
        f"{len(images)} images, batch size {args.batch_size}, forward chunk {scorer.forward_chunk or 'whole batch'}; "
        f"paper's method on {len(paper_images)} images"
    )
    print(f"closed form vs paper's backward: max relative difference {worst:.2e}")
    print(f"{'method':<40}{'images/s':>12}")
    print(f"{'(a) paper: batch 1, full backward':<40}{median['paper']:>12.1f}")
    print(f"{'(b) gradwatch: batched closed form':<40}{median['closed_form']:>12.1f}")
    print(f"{'(c) plain forward pass (ceiling)':<40}{median['forward']:>12.1f}")
    print(f"b/a = {median['closed_form'] / median['paper']:.2f}   (target >= 2 on a 2-core CPU)")
    print(f"b/c = {median['closed_form'] / median['forward']:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
