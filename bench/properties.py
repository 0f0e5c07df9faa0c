"""What each step of measuring image properties costs beside decoding and scoring, on this machine's CPU.

Usage: python bench/properties.py [--images DIR] [--count 256] [--repeat 3] [--model SPEC]

Per image, best of --repeat passes, one step at a time on one thread: host decoding and preprocessing, the native
properties (measured at decode, on the image's own resolution), the input properties (measured on the model's input
batches of 32 a forward chunk at a time, as the scorer measures them), and the whole of score() on those batches.
What they cost together, where the pipeline's decoding threads run beside the forward pass, is bench/pipeline.py's
"with image properties / without".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.common import SHARED  # noqa: E402
from scoring import DEFAULT_MODEL, decode_image, load_scorer  # noqa: E402
from scoring.jpeg import read_jpeg_header  # noqa: E402
from scoring.properties import NativeImage, input_properties, native_properties  # noqa: E402

BATCH = 32


def best_milliseconds(work: Callable[[], object], count: int, repeat: int) -> float:
    """Per item, the best of ``repeat`` runs of ``work`` over ``count`` items."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        runs.append(time.perf_counter() - started)
    return min(runs) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "imagenet-samples")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    blobs = [path.read_bytes() for path in sorted(args.images.glob("*.JPEG"))[: args.count]]
    scorer = load_scorer(args.model, device="cpu")
    preprocessing = scorer.preprocessing
    images = [decode_image(data, limits=preprocessing) for data in blobs]
    batches = [
        torch.stack([preprocessing.to_tensor(image) for image in images[start : start + BATCH]])
        for start in range(0, len(images), BATCH)
    ]
    count, repeat = len(blobs), args.repeat

    decode = best_milliseconds(
        lambda: [preprocessing.to_tensor(decode_image(data, limits=preprocessing)) for data in blobs], count, repeat
    )
    native = best_milliseconds(
        lambda: [
            native_properties(NativeImage.of(image, read_jpeg_header(data)))
            for image, data in zip(images, blobs, strict=True)
        ],
        count,
        repeat,
    )
    with torch.inference_mode():
        inputs = best_milliseconds(
            lambda: [
                input_properties(chunk, scale=preprocessing.std, shift=preprocessing.mean)
                for batch in batches
                for chunk in batch.split(scorer.forward_chunk or len(batch))
            ],
            count,
            repeat,
        )
    # The whole of score(): on onnxruntime it measures the input properties beside its scores, after the network.
    scoring = best_milliseconds(lambda: [scorer.score(batch) for batch in batches], count, repeat)
    print(f"{count} images from {args.images}, {args.model}, CPU ({torch.get_num_threads()} threads), ms per image:")
    print(f"  decode + preprocess (host)   {decode:7.2f}")
    print(f"  native properties            {native:7.2f}")
    print(f"  input properties             {inputs:7.2f}")
    print(f"  score() in full              {scoring:7.2f}")


if __name__ == "__main__":
    main()
