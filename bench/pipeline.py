"""Beam pipeline throughput against a bare decode-and-score loop, and its peak memory as images grow.

Usage: python bench/pipeline.py [--images DIR] [--count 1000] [--repeat 5] [--model SPEC]

Each measurement runs in a fresh child process on the same cores, so peak RSS is its own. The pipeline
runs on the default local runner (in-process FnApiRunner), with and without the image properties
(scoring.properties), and with ViM and the projected features kept, as thresholds of this version make it run;
the bare loop reads, decodes, preprocesses and scores the same images with the same scorer in batches of the
pipeline's size. The memory check scores COUNT and COUNT x REPEAT images (a manifest naming each image REPEAT
times, spread over hours).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from scoring.models import DEFAULT_MODEL  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-samples"
BATCH_SIZE = 32
# Images ViM and the feature projection are fitted on for the run that keeps them (calibrate fits on 30%).
FIT_IMAGES = 300


def write_manifest(images: list[Path], repeat: int, path: Path) -> None:
    """Each image ``repeat`` times, an hour apart; the copies are links of their own, since a manifest naming one
    image twice has the second row rejected as a duplicate."""
    start = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["uri", "event_time"])
        for copy in range(repeat):
            folder = path.parent / f"{path.stem}-copy-{copy}"
            if copy:
                folder.mkdir(exist_ok=True)
            for index, image in enumerate(images):
                named = folder / image.name if copy else image
                if copy:
                    named.symlink_to(image.resolve())
                when = start + dt.timedelta(hours=copy, seconds=index)
                writer.writerow([str(named), when.isoformat()])


def child_pipeline(manifest: str, model: str, fitted_scores: dict | None = None) -> dict:
    from pipelines.pipeline import ScoringConfig, run_scoring
    from scoring import ScoringSettings

    scoring = ScoringSettings(model=model, batch_size=BATCH_SIZE, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        config = ScoringConfig(source=manifest, out=out, scoring=scoring, fitted_scores=fitted_scores or {})
        summary = run_scoring(config)
    return {"images": summary.scored, "seconds": summary.seconds, "reconciled": summary.reconciled}


def child_pipeline_without_properties(manifest: str, model: str) -> dict:
    """The pipeline as it was before image properties (issue 15): the same run with none registered."""
    import pipelines.records
    import scoring.properties

    scoring.properties._REGISTRY.clear()
    pipelines.records.CORE_PROPERTY_COLUMNS = ()
    return child_pipeline(manifest, model)


def child_pipeline_keeping_features(manifest: str, model: str) -> dict:
    """The pipeline as monitoring runs it with thresholds of this version: ViM computed and every image's projected
    features kept, both fitted (outside the timed run) on the first 300 images, as calibrate fits them."""
    from scoring import load_scorer

    with open(manifest, newline="") as file:
        uris = [row["uri"] for row in csv.DictReader(file)][:FIT_IMAGES]
    fitted = load_scorer(model, device="cpu").fit_scores([Path(uri).read_bytes() for uri in uris], sources=uris)
    return child_pipeline(manifest, model, fitted)


def child_loop(manifest: str, model: str) -> dict:
    import torch

    from scoring import ImageDecodeError, decode_image, load_scorer

    with open(manifest, newline="") as file:
        uris = [row["uri"] for row in csv.DictReader(file)]
    scorer = load_scorer(model, device="cpu")
    started = time.perf_counter()
    scored = 0
    for start in range(0, len(uris), BATCH_SIZE):
        tensors = []
        for uri in uris[start : start + BATCH_SIZE]:
            try:
                data = Path(uri).read_bytes()
                tensors.append(
                    scorer.preprocessing.to_tensor(decode_image(data, source=uri, limits=scorer.preprocessing))
                )
            except ImageDecodeError:
                continue
        if tensors:
            scored += len(scorer.score(torch.stack(tensors))["gradnorm"])
    return {"images": scored, "seconds": time.perf_counter() - started, "reconciled": True}


def measure(kind: str, manifest: Path, model: str) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--manifest", str(manifest), "--model", model],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args.manifest, args.model)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    images = sorted(path for path in args.images.iterdir() if path.suffix.lower() in (".jpeg", ".jpg", ".png"))
    images = images[: args.count]
    with tempfile.TemporaryDirectory() as scratch:
        small, large = Path(scratch) / "small.csv", Path(scratch) / "large.csv"
        write_manifest(images, 1, small)
        write_manifest(images, args.repeat, large)
        loop = measure("loop", small, args.model)
        pipeline = measure("pipeline", small, args.model)
        without = measure("pipeline-without-properties", small, args.model)
        keeping = measure("pipeline-keeping-features", small, args.model)
        pipeline_large = measure("pipeline", large, args.model)

    def rate(result: dict) -> float:
        return result["images"] / result["seconds"]

    print(f"{len(images)} images from {args.images.resolve()}, model {args.model}, CPU, batch {BATCH_SIZE}")
    print(f"{'run':<44}{'images':>8}{'images/s':>10}{'peak RSS MB':>13}")
    for name, result in (
        ("bare loop: read, decode, score", loop),
        ("pipeline (local FnApiRunner)", pipeline),
        ("pipeline without image properties", without),
        ("pipeline with ViM and features kept", keeping),
        (f"pipeline, each image x{args.repeat}", pipeline_large),
    ):
        print(f"{name:<44}{result['images']:>8}{rate(result):>10.1f}{result['peak_rss_mb']:>13.0f}")
    print(f"pipeline / bare loop throughput = {rate(pipeline) / rate(loop):.2f}  (target >= 0.7)")
    print(f"pipeline with image properties / without = {rate(pipeline) / rate(without):.2f}  (target >= 0.9)")
    print(
        f"pipeline with properties, ViM and features kept / without properties = {rate(keeping) / rate(without):.2f}"
        "  (target >= 0.9)"
    )
    growth = pipeline_large["peak_rss_mb"] / pipeline["peak_rss_mb"]
    print(f"peak RSS x{args.repeat} images / x1 = {growth:.2f}  (flat means memory does not grow with images)")
    print(f"reconciled: {pipeline['reconciled'] and pipeline_large['reconciled']}")


CHILDREN = {
    "pipeline": child_pipeline,
    "pipeline-without-properties": child_pipeline_without_properties,
    "pipeline-keeping-features": child_pipeline_keeping_features,
    "loop": child_loop,
}

if __name__ == "__main__":
    main()
