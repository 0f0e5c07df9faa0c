"""What decoding costs the host, measured on a CPU: device decoding's header check and kernels launched, and
end to end on 1080p camera frames with and without decoding JPEGs at a reduced scale.

Usage: python bench/host_costs.py [--images DIR] [--count 1000] [--repeat 5]
       python bench/host_costs.py --end-to-end [--frames 96] [--rounds 3] [--model SPEC]

On a GPU the threads that feed nvJPEG spend their time in Python and in kernel launches, under one interpreter
lock (issue 8), so this counts what each step asks of the host without needing a GPU:
- the header check: the JPEG marker scan against Pillow's Image.open reading the same fields (the check before),
  and whether the two agree on every JPEG in ../shared/data;
- preprocessing a chunk of DEVICE_DECODE_CHUNK frames: kernels dispatched when they are resampled together
  (Preprocessing.frames_to_tensor) against one at a time (pixels_to_tensor), counted as torch dispatches them.
Timings take the best of --repeat passes, both ways in the same run.

--end-to-end measures instead images/s on 1920x1080 JPEGs made from the ImageNet samples (bench/camera_frames.py):
decode, preprocess and score with the model through Scorer.score_encoded in the pipeline's batches (what its model
handler calls), full decode against ScoringSettings.scaled_jpeg_decode, in alternating rounds of one run; the
ratio is of their total rates. bench/scaled_decoding_accuracy.py says how far that moves the scores.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench.camera_frames import camera_frames  # noqa: E402
from bench.common import SHARED  # noqa: E402
from scoring import DEFAULT_MODEL, load_scorer  # noqa: E402
from scoring.images import Preprocessing  # noqa: E402
from scoring.jpeg import read_jpeg_header  # noqa: E402
from scoring.scorer import DEVICE_DECODE_CHUNK  # noqa: E402

# Operators that make views: no kernel runs for them.
_VIEWS = {"slice", "select", "unsqueeze", "view", "_unsafe_view", "transpose", "permute", "unbind", "expand", "alias"}


def pillow_header(data: bytes) -> tuple:
    """The fields device decoding checks, read by Pillow, as the header check did before the marker scan."""
    with Image.open(io.BytesIO(data)) as header:
        tagged = any(key in header.info for key in ("exif", "xmp"))
        orientation = header.getexif().get(0x0112, 1) if tagged else 1
        return header.format, header.mode, header.size, getattr(header, "layer", None), orientation


def fields_agree(data: bytes) -> bool:
    header = read_jpeg_header(data)
    image_format, mode, size, layers, orientation = pillow_header(data)
    return (
        header is not None
        and image_format == "JPEG"
        and (header.width, header.height) == size
        and header.components == tuple(layer[:3] for layer in layers)
        and header.upright == (orientation in (0, 1))
        and header.ycbcr == (mode == "RGB")
    )


def best_microseconds(work: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


class KernelCount(TorchDispatchMode):
    """Counts the operators torch dispatches that run a kernel (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] not in _VIEWS:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def end_to_end(frames: list[bytes], model: str, rounds: int) -> None:
    """Images/s of decode + preprocess + score on ``frames``, full and scaled decoding alternating each round."""
    scorers = {scaled: load_scorer(model, device="cpu", scaled_jpeg_decode=scaled) for scaled in (False, True)}
    batch = scorers[False].settings.batch_size_on("cpu")
    batches = [frames[start : start + batch] for start in range(0, len(frames), batch)]

    def run(scaled: bool) -> float:
        started = time.perf_counter()
        for images in batches:
            outcomes = scorers[scaled].score_encoded(images, sources=[f"frame-{index}" for index in range(len(images))])
            if not all(isinstance(outcome, dict) for outcome in outcomes):
                sys.exit(f"a frame was rejected: {next(o for o in outcomes if not isinstance(o, dict))}")
        return time.perf_counter() - started

    for scaled in scorers:  # threads, caches and the first forward pass, outside the count
        scorers[scaled].score_encoded(frames[:8], sources=["warm-up"] * len(frames[:8]))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        for scaled in (False, True) if round_ % 2 == 0 else (True, False):
            seconds[scaled].append(run(scaled))
    rates = {scaled: [len(frames) / spent for spent in seconds[scaled]] for scaled in seconds}
    print(f"end to end, {len(frames)} 1920x1080 JPEG frames, {model}, {len(os.sched_getaffinity(0))} cores, batches "
          f"of {batch}, {rounds} alternating rounds, images/s:")  # fmt: skip
    for scaled, label in ((False, "full decode"), (True, "scaled decode")):
        print(f"  {label:<14} {' '.join(f'{rate:.1f}' for rate in rates[scaled])}")
    total = {scaled: len(frames) * rounds / sum(seconds[scaled]) for scaled in seconds}
    print(f"  scaled / full: {total[True] / total[False]:.2f} ({total[True]:.1f} against {total[False]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SHARED / "imagenet-samples")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--end-to-end", action="store_true", help="only the 1080p end-to-end figure")
    parser.add_argument("--frames", type=int, default=96, help="1080p frames end to end (default: %(default)s)")
    parser.add_argument("--frames-cache", type=Path, default=Path(tempfile.gettempdir()) / "gradwatch-1080p")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    if args.end_to_end:
        paths = camera_frames(args.images, args.frames_cache / args.images.name, args.frames)
        end_to_end([path.read_bytes() for path in paths], args.model, args.rounds)
        return
    blobs = [path.read_bytes() for path in sorted(args.images.glob("*.JPEG"))[: args.count]]
    if not blobs:
        sys.exit(f"no *.JPEG files in {args.images}; pass --images DIR")

    pillow = best_microseconds(lambda: [pillow_header(data) for data in blobs], len(blobs), args.repeat)
    scan = best_microseconds(lambda: [read_jpeg_header(data) for data in blobs], len(blobs), args.repeat)
    print(f"header check, {len(blobs)} JPEGs, µs per image: Pillow {pillow:.1f}, marker scan {scan:.1f}")
    print(f"  marker scan / Pillow: {scan / pillow:.2f}")
    every_jpeg = [path.read_bytes() for path in sorted(SHARED.rglob("*")) if path.suffix.lower() in (".jpeg", ".jpg")]
    agreeing = sum(fields_agree(data) for data in every_jpeg)
    print(f"  size, sampling and orientation as Pillow reads them: {agreeing} of {len(every_jpeg)} JPEGs in {SHARED}")

    frames = [
        torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1).contiguous()
        for data in blobs[:DEVICE_DECODE_CHUNK]
    ]
    for interpolation in ("bilinear", "bicubic"):
        preprocessing = Preprocessing(interpolation=interpolation)
        preprocessing.frames_to_tensor(frames[:2])  # the cached normalisation is made outside the count
        with KernelCount() as together:
            preprocessing.frames_to_tensor(frames)
        with KernelCount() as one_at_a_time:
            for frame in frames:
                preprocessing.pixels_to_tensor(frame)
        print(
            f"kernels to preprocess {len(frames)} ImageNet photos ({interpolation}): together {together.kernels}, "
            f"one at a time {one_at_a_time.kernels} ({together.kernels / one_at_a_time.kernels:.2f})"
        )


if __name__ == "__main__":
    main()
