"""Throughput of GradNorm: the paper's per-image backward pass vs the batched closed form vs a forward pass, on
torch and on ONNX Runtime.

Usage: python bench/scoring.py [--images DIR] [--count N] [--batch-size B] [--model SPEC] [--device D]

Every method runs in one process on the same preprocessed images (decoding is not timed), in turns of one batch
through every method back to back, each turn in the reverse order of the one before, so that machine noise hits
them alike; each rate is the median of its turns, each ratio the median of the turns' ratios. ONNX Runtime runs
where it can (a CPU): its rows are left out, with the reason, elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import images_per_second  # noqa: E402
from scoring import DEFAULT_MODEL, ImageDecodeError, Scorer, load_model, load_scorer  # noqa: E402
from scoring.onnx_backend import BackendUnavailableError, OnnxRuntimeForward  # noqa: E402
from scoring.reference import gradnorm_by_backward  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-samples"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def load_images(scorer: Scorer, folder: Path, count: int) -> torch.Tensor:
    """Up to ``count`` preprocessed images of ``folder``, NCHW-contiguous on the scorer's device."""
    tensors = []
    for path in sorted(folder.iterdir()):
        if len(tensors) == count:
            break
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            tensors.append(scorer.preprocess(path))
        except ImageDecodeError:
            continue
    if not tensors:
        raise SystemExit(f"no images in {folder}; pass --images DIR")
    return torch.stack(tensors).to(scorer.device)


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

    cores = torch.get_num_threads()
    scorer = load_scorer(args.model, device=args.device, backend="torch", forward_chunk=args.chunk)
    onnx_scorer: Scorer | None = None
    try:
        onnx_scorer = load_scorer(args.model, device=args.device, backend="onnxruntime", forward_chunk=args.chunk)
        onnx_forward = OnnxRuntimeForward.load(load_model(args.model), args.model)
    except BackendUnavailableError as error:
        print(f"onnxruntime rows left out: {error}")
    images = load_images(scorer, args.images, args.count)
    # Each backend's own layout: torch's convolutions run channels-last, ONNX Runtime reads NCHW.
    channels_last = images.contiguous(memory_format=torch.channels_last)
    paper_images = channels_last[: args.paper_count]
    chunk = scorer.forward_chunk or args.batch_size
    batches, channels_last_batches = images.split(args.batch_size), channels_last.split(args.batch_size)
    # The paper's method is ~10x slower: a slice of its images a turn, so its turns last about twice a batch's.
    paper_batches = torch.tensor_split(paper_images, max(1, min(len(batches), len(paper_images))))

    def paper(index: int) -> int:
        part = paper_batches[index % len(paper_batches)]
        gradnorm_by_backward(scorer.model, scorer.head, part)
        return len(part)

    def closed_form(on: Scorer, layout: tuple[torch.Tensor, ...]) -> Callable[[int], int]:
        return lambda index: len(on.score(layout[index])["pred"])

    def torch_forward(index: int) -> int:
        with torch.inference_mode():
            for part in channels_last_batches[index].split(chunk):
                scorer.model(part)
        return len(channels_last_batches[index])

    def onnx_bare_forward(index: int) -> int:
        for part in batches[index].split(chunk):
            onnx_forward(part)
        return len(batches[index])

    # Each method with torch's intra-op threads as a worker of its backend has them: all the cores on torch, one
    # beside onnxruntime (scoring.onnx_backend says why), which has the cores to itself.
    methods: dict[str, tuple[Callable[[int], int], int]] = {
        "paper": (paper, cores),
        "torch_closed_form": (closed_form(scorer, channels_last_batches), cores),
        "torch_forward": (torch_forward, cores),
    }
    if onnx_scorer is not None:
        methods["onnx_closed_form"] = (closed_form(onnx_scorer, batches), 1)
        methods["onnx_forward"] = (onnx_bare_forward, 1)

    torch.set_num_threads(cores)
    exact = gradnorm_by_backward(scorer.model, scorer.head, paper_images)
    torch_scores = {name: np.concatenate(values) for name, values in _columns(scorer, channels_last, args).items()}
    worst = float(np.max(np.abs(torch_scores["gradnorm"][: len(exact)] - exact) / exact))

    # A turn is one batch through every method, back to back, in the reverse order of the turn before: machine
    # noise, which comes in bursts of seconds here, then hits the methods a ratio compares alike.
    rates: dict[str, list[float]] = {name: [] for name in methods}
    turn = 0
    for _ in range(args.rounds):
        for index in range(len(batches)):
            order = list(methods) if turn % 2 == 0 else list(reversed(methods))
            for name in order:
                run, torch_threads = methods[name]
                torch.set_num_threads(torch_threads)
                rates[name].append(_turn_rate(run, index, scorer.device))
            turn += 1
    torch.set_num_threads(cores)
    median = {name: statistics.median(values) for name, values in rates.items()}

    def ratio(numerator: str, denominator: str) -> float:
        return statistics.median(a / b for a, b in zip(rates[numerator], rates[denominator], strict=True))

    print(f"model {scorer.model_id} on {scorer.device}, torch threads {cores} (1 beside onnxruntime's {cores})")
    print(
        f"{len(images)} images, batch size {args.batch_size}, forward chunk {scorer.forward_chunk or 'whole batch'}; "
        f"paper's method on {len(paper_images)} images; {args.rounds} rounds of {len(batches)} turns, a batch each"
    )
    print(f"closed form vs paper's backward: max relative difference {worst:.2e}")
    if onnx_scorer is not None:
        onnx_scores = {name: np.concatenate(values) for name, values in _columns(onnx_scorer, images, args).items()}
        differences = {
            name: float(np.max(np.abs(onnx_scores[name] - torch_scores[name]) / np.abs(torch_scores[name])))
            for name in scorer.score_names
        }
        print(
            "onnxruntime vs torch, max relative difference: "
            + ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
            + f"; predictions equal: {bool(np.array_equal(onnx_scores['pred'], torch_scores['pred']))}"
        )
    rows = {
        "(a) paper: batch 1, full backward": "paper",
        "(b) closed form, torch": "torch_closed_form",
        "(c) forward pass, torch": "torch_forward",
        "(d) closed form, onnxruntime": "onnx_closed_form",
        "(e) forward pass, onnxruntime": "onnx_forward",
    }
    print(f"{'method':<40}{'images/s':>12}")
    for label, name in rows.items():
        if name in median:
            print(f"{label:<40}{median[name]:>12.1f}")
    print(f"b/a = {ratio('torch_closed_form', 'paper'):.2f}   (target >= 2 on a 2-core CPU)")
    print(f"b/c = {ratio('torch_closed_form', 'torch_forward'):.3f}  (target >= 0.9)")
    if onnx_scorer is not None:
        print(f"d/b = {ratio('onnx_closed_form', 'torch_closed_form'):.2f}   (target >= 1.8)")
        print(f"d/e = {ratio('onnx_closed_form', 'onnx_forward'):.3f}  (target >= 0.95)")


def _turn_rate(run: Callable[[int], int], index: int, device: torch.device) -> float:
    """Images per second of ``run`` on batch ``index``; ``run`` returns how many images it scored."""
    scored: list[int] = []
    calls_per_second = images_per_second(lambda: scored.append(run(index)), 1, device)
    return scored[0] * calls_per_second


def _columns(on: Scorer, images: torch.Tensor, args: argparse.Namespace) -> dict[str, list[np.ndarray]]:
    columns: dict[str, list[np.ndarray]] = {}
    for batch in images.split(args.batch_size):
        for name, values in on.score(batch).items():
            columns.setdefault(name, []).append(values)
    return columns


if __name__ == "__main__":
    main()
