"""GPU worker throughput: the paper's method, the closed form, a forward pass, and end to end from JPEG bytes.

Usage: python bench/gpu.py [--device auto] [--count 2048] [--batch-size 256] [--resnet50-weights FILE] [--compile]
                           [--skip-efficientnet] [--profile] [--sweep]

One short script for a lent GPU machine (a few minutes); on a CPU, ``--count 32 --batch-size 16`` runs every
measurement at a small size so the code paths are exercised without a GPU. Models: EfficientNet-Lite0 (shipped
weights) and, when torchvision loads, ResNet-50 (random weights unless a state dict is given). For each: images/s
of the paper's method (batch 1 + backward), the closed form and a plain forward pass in fp32, fp16 and bf16, and
end to end from JPEG bytes through the pipeline's model handler (host decoding threads, and the device's JPEG
decoder when torchvision loads, also on the photos re-encoded as one 640x480 camera sends them), with ratios to
the forward pass of the same precision and to the paper's method; ``--profile`` shows where one such pass spends
host and device time, ``--sweep`` tries other decoding thread counts and chunk sizes.
Then how far fp16, bf16 and device decoding move the scores, and the AUROC of ImageNet samples against DTD
textures (../shared/data) in each precision.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import scoring.scorer as scorer_module  # noqa: E402
from bench.common import SHARED, images_per_second  # noqa: E402
from pipelines.inference import ScorerModelHandler  # noqa: E402
from pipelines.records import EncodedImage  # noqa: E402
from scoring import DEFAULT_MODEL, Scorer, ScoringSettings, decode_image, load_scorer, resolve_device  # noqa: E402
from scoring.decoding import DeviceJpegDecoder  # noqa: E402
from scoring.jpeg import read_jpeg_header  # noqa: E402
from scoring.properties import NativeImage, native_properties  # noqa: E402
from scoring.reference import gradnorm_by_backward  # noqa: E402
from scoring.scorer import DEVICE_DECODE_CHUNK  # noqa: E402
from scoring.separation import auroc  # noqa: E402

FAST = ("fp16", "bf16")


def jpeg_bytes(folder: Path, count: int) -> list[bytes]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))[:count]
    return [path.read_bytes() for path in paths]


def torchvision_loads() -> bool:
    try:
        import torchvision.io  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def rate(run: Callable[[], object], count: int, device: torch.device, rounds: int = 3) -> float:
    """Median images/s over ``rounds`` after one warm-up call (kernels, autotuning, allocator)."""
    run()
    return statistics.median(images_per_second(run, count, device) for _ in range(rounds))


def forward_pass(scorer: Scorer, batches: list[torch.Tensor], precision: str) -> Callable[[], None]:
    """The model alone, as the scorer runs it: same chunks, same memory format, same autocast."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(scorer.device.type, dtype=dtype, enabled=dtype is not None):
            for batch in batches:
                if scorer.device.type == "cuda":
                    batch = batch.pin_memory()  # as Scorer.score copies it
                batch = batch.to(scorer.device, non_blocking=True, memory_format=torch.channels_last)
                for chunk in batch.split(scorer.forward_chunk or len(batch)):
                    scorer.model(chunk)
            if scorer.device.type == "cuda":
                torch.cuda.synchronize()

    return run


def end_to_end(handler: ScorerModelHandler, blobs: list[bytes], batch_size: int) -> tuple[Callable[[], None], Scorer]:
    """JPEG bytes through the pipeline's handler, batch by batch, as RunInference calls it."""
    scorer = handler.load_model()
    batches = [
        [
            EncodedImage("", f"image-{start + index}", None, "", data)
            for index, data in enumerate(blobs[start:][:batch_size])
        ]
        for start in range(0, len(blobs), batch_size)
    ]

    def run() -> None:
        for batch in batches:
            for result in handler.run_inference(batch, scorer):
                if not isinstance(result.inference, dict):
                    raise RuntimeError(f"{result.example.uri} was rejected: {result.inference}")

    return run, scorer


def camera_feed(blobs: list[bytes]) -> list[bytes]:
    """The same photos as one 640x480 camera would send them: 4:3, one size, 4:2:0 JPEG at quality 90."""
    frames = {}
    for data in blobs:
        if data not in frames:
            image = decode_image(data)
            frames[data] = encode_jpeg(ImageOps.fit(image, (640, 480)))
    return [frames[data] for data in blobs]


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, subsampling=2)
    return buffer.getvalue()


def decode_stages(decoder: DeviceJpegDecoder, blobs: list[bytes], device: torch.device, feed: str) -> None:
    """Microseconds per image of each step of device decoding, one thread, chunk by chunk."""
    steps = ("header check", "bytes to tensor", "decode", "native properties", "preprocess", "one frame at a time")
    spent = dict.fromkeys(steps, 0.0)

    def timed(step: str, work: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        spent[step] += time.perf_counter() - start
        return result

    for start in range(0, len(blobs), DEVICE_DECODE_CHUNK):
        chunk = blobs[start : start + DEVICE_DECODE_CHUNK]
        accepted = timed("header check", lambda c=chunk: [data for data in c if decoder.accepts(data)])
        encoded = timed(
            "bytes to tensor", lambda a=accepted: [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in a]
        )
        decoded = timed("decode", lambda e=encoded: decoder._decode(e))
        timed(
            "native properties",
            lambda d=decoded, a=accepted: [
                native_properties(NativeImage.of(f.permute(1, 2, 0), read_jpeg_header(b)))
                for f, b in zip(d, a, strict=True)
            ],
        )
        timed("preprocess", lambda d=decoded: decoder._preprocess(d))
        # What preprocessing cost before frames were resampled together (issue 8), for comparison.
        timed(
            "one frame at a time",
            lambda d=decoded: [decoder._preprocessing.pixels_to_tensor(f) for f in d if f is not None],
        )
    steps = ", ".join(f"{step} {seconds / len(blobs) * 1e6:.0f}" for step, seconds in spent.items())
    print(f"device decoding of {feed}, one thread, µs per image: {steps}")


def sweep_device_decoding(
    handler: ScorerModelHandler,
    precision: str,
    blobs: list[bytes],
    batch_size: int,
    device: torch.device,
    record: Callable[[str, float], float],
) -> None:
    """End to end and decoding alone for other decoding thread counts and chunk sizes, in the same run.

    Threads share one interpreter lock and torchvision's nvJPEG handle; chunks set how many images one call
    decodes. Which pair feeds the GPU best is for a GPU to say, so each gets a fresh scorer (its own threads).
    """
    defaults = (scorer_module.DEVICE_DECODE_THREADS, scorer_module.DEVICE_DECODE_CHUNK)
    sources = [f"image-{i}" for i in range(len(blobs))]
    try:
        for threads in (2, 4, 8):
            for chunk in (32, 128):
                scorer_module.DEVICE_DECODE_THREADS, scorer_module.DEVICE_DECODE_CHUNK = threads, chunk
                scorer_module.DEVICE_DECODE_AHEAD = 2 * threads
                run, scorer = end_to_end(handler, blobs, batch_size)
                record(
                    f"  end to end, {precision}, device decode, {threads} threads x {chunk}",
                    rate(run, len(blobs), device),
                )
                record(
                    f"  device decode alone, {threads} threads x {chunk}",
                    rate(lambda s=scorer: list(s._decode_all(blobs, sources)), len(blobs), device),
                )
    finally:
        scorer_module.DEVICE_DECODE_THREADS, scorer_module.DEVICE_DECODE_CHUNK = defaults
        scorer_module.DEVICE_DECODE_AHEAD = 2 * defaults[0]


def profile(run: Callable[[], None], device: torch.device) -> None:
    """Where one end-to-end pass spends device time, and host time on the calling thread."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiled:
        run()
    averages = profiled.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
    if device.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=10))


def relative_difference(approx: np.ndarray, exact: np.ndarray) -> str:
    relative = np.abs(approx - exact) / np.abs(exact)
    return f"median {np.median(relative):.1e}, max {relative.max():.1e}"


def measure(name: str, spec: str, args: argparse.Namespace, blobs: list[bytes], textures: list[bytes]) -> None:
    camera = camera_feed(blobs)
    device = resolve_device(args.device)
    scorers = {"fp32": load_scorer(spec, device=args.device)}
    scorers.update({precision: load_scorer(spec, device=args.device, precision=precision) for precision in FAST})
    exact = scorers["fp32"]
    images = torch.stack([exact.preprocess(blob) for blob in blobs])
    batches = list(images.split(args.batch_size))
    paper_images = images[: args.paper_count].to(device)

    rates: dict[str, float] = {}

    def record(method: str, value: float) -> float:
        # Printed as measured, so a run cut short by the device's time limit still reports what it reached.
        print(f"  {name}, {method}: {value:.1f} images/s", flush=True)
        rates[method] = value
        return value

    record(
        "paper: batch 1 + backward",
        rate(lambda: gradnorm_by_backward(exact.model, exact.head, paper_images), len(paper_images), device, rounds=1),
    )
    forward = {}
    for precision in ("fp32", *FAST):
        forward[precision] = record(
            f"forward pass {precision}", rate(forward_pass(exact, batches, precision), len(images), device)
        )
    for precision, scorer in scorers.items():
        record(f"closed form {precision}", rate(lambda s=scorer: list(s.score_batches(batches)), len(images), device))
    # score() reads each batch's scores before the next is copied: what score_batches' overlap is worth.
    record(
        "closed form bf16, score() per batch",
        rate(lambda: [scorers["bf16"].score(b) for b in batches], len(images), device),
    )
    if args.compile:
        compiled = load_scorer(spec, device=args.device, precision="fp16", compile=True)
        record("closed form fp16, compiled", rate(lambda: [compiled.score(b) for b in batches], len(images), device))
    # Half precision only pays on tensor cores; a CPU without native fp16 runs it many times slower than fp32.
    e2e_precision = "fp16" if device.type == "cuda" else "fp32"
    decoders = ["host", *(["device"] if torchvision_loads() else [])]
    end_to_end_scores = {}
    for decoder in decoders:
        settings = ScoringSettings(model=spec, device=args.device, precision=e2e_precision, decoder=decoder)
        handler = ScorerModelHandler(settings, expected_model_id=exact.model_id)
        run, scorer = end_to_end(handler, blobs, args.batch_size)
        record(f"end to end from JPEG, {e2e_precision}, {decoder} decode", rate(run, len(blobs), device))
        sources = [f"image-{i}" for i in range(len(blobs))]
        # What the decoding alone sustains, to tell a decode-bound pipeline from a slow model.
        record(
            f"{decoder} decode + preprocess alone",
            rate(lambda s=scorer, n=sources: list(s._decode_all(blobs, n)), len(blobs), device),
        )
        end_to_end_scores[decoder] = scorer.score_encoded(blobs, sources=sources)
        if decoder == "device":
            # A camera's feed has one frame size, so the device resizes each chunk in one go.
            run, _ = end_to_end(handler, camera, args.batch_size)
            record(f"end to end from JPEG, {e2e_precision}, device decode, one camera", rate(run, len(camera), device))
            record(
                "device decode + preprocess alone, one camera",
                rate(lambda s=scorer, n=sources: list(s._decode_all(camera, n)), len(camera), device),
            )
            if args.sweep:
                sweep_device_decoding(handler, e2e_precision, blobs, args.batch_size, device, record)
            if args.profile:
                for feed, feed_blobs in (("ImageNet photos", blobs), ("one camera", camera)):
                    decode_stages(scorer._device_decoder, feed_blobs, device, feed)
                profile(run, device)

    print(f"\n{name}: {exact.model_id} on {device}, {len(images)} images, batch {args.batch_size}")
    paper = rates["paper: batch 1 + backward"]
    print(f"{'method':<54}{'images/s':>11}{'/ forward':>11}{'/ paper':>10}")
    for method, value in rates.items():
        same_precision = next((value for p, value in forward.items() if p in method), forward["fp32"])
        print(f"{method:<54}{value:>11.1f}{value / same_precision:>11.3f}{value / paper:>10.1f}")
    print("(/ forward: against the forward pass of the same precision)")

    columns = {
        p: {k: np.concatenate([s.score(b)[k] for b in batches]) for k in ("gradnorm", "msp")}
        for p, s in scorers.items()
    }
    for precision in FAST:
        moved = relative_difference(columns[precision]["gradnorm"], columns["fp32"]["gradnorm"])
        print(f"{precision} vs fp32 GradNorm: {moved}")
    if "device" in end_to_end_scores:
        host, on_device = (np.array([o["gradnorm"] for o in end_to_end_scores[d]]) for d in ("host", "device"))
        print(f"device vs host decoding, {e2e_precision} GradNorm: {relative_difference(on_device, host)}")
    if textures:
        shifted = list(torch.stack([exact.preprocess(blob) for blob in textures]).split(args.batch_size))
        for score in ("gradnorm", "msp"):
            aurocs = []
            for precision, scorer in scorers.items():
                ood = np.concatenate([scorer.score(b)[score] for b in shifted])
                aurocs.append(f"{precision} {auroc(columns[precision][score], ood):.4f}")
            print(f"AUROC {score}, ImageNet vs DTD: {', '.join(aurocs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--count", type=int, default=2048)
    parser.add_argument("--paper-count", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resnet50-weights", help="a torchvision ResNet-50 state dict; random weights without one")
    parser.add_argument("--compile", action="store_true", help="also time the closed form under torch.compile")
    parser.add_argument("--skip-efficientnet", action="store_true", help="ResNet-50 only")
    parser.add_argument("--profile", action="store_true", help="profile one end-to-end pass with device decoding")
    parser.add_argument(
        "--sweep", action="store_true", help="device decoding with 2, 4 and 8 threads and chunks of 32 and 128"
    )
    args = parser.parse_args()
    args.paper_count = min(args.paper_count, args.count)

    blobs = jpeg_bytes(SHARED / "imagenet-samples", args.count)
    while len(blobs) < args.count:  # repeat the 1000 samples for larger runs
        blobs += blobs[: args.count - len(blobs)]
    textures = jpeg_bytes(SHARED / "ood" / "dtd-textures", min(300, args.count))
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}")
    if not args.skip_efficientnet:
        measure("EfficientNet-Lite0", DEFAULT_MODEL, args, blobs, textures)
    if not torchvision_loads():
        print("\nResNet-50: skipped, torchvision does not load beside this torch")
        return
    weights = args.resnet50_weights
    with tempfile.TemporaryDirectory() as folder:
        if weights is None:
            # Saved once, so the handler's own load finds the same weights (and model id) as the bench's scorers.
            import torchvision.models

            torch.manual_seed(0)
            weights = str(Path(folder) / "resnet50-random.pth")
            torch.save(torchvision.models.resnet50().state_dict(), weights)
        measure(
            "ResNet-50",
            f"torchvision:resnet50?weights={weights}",
            args,
            blobs,
            textures if args.resnet50_weights else [],
        )


if __name__ == "__main__":
    main()
