"""Helpers the evaluation scripts share: score folders through the Beam pipeline and read the result."""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.store import OutputStore
from scoring import ScoringSettings, load_model
from scoring.images import decode_image
from scoring.scores import computable_scores

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".bmp")

# ../shared/data beside the checkout; GRADWATCH_SHARED_DATA points elsewhere (a copy carried to a GPU machine).
SHARED = Path(os.environ.get("GRADWATCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def score_folder_with_pipeline(
    folder: Path, out: Path, model: str, fitted_scores: dict[str, Any] | None = None
) -> pa.Table:
    """Run the scoring pipeline on ``folder`` (once: an existing OUT is reused while it has every score this version
    computes) and return its scores, the fitted scores computed with ``fitted_scores`` (what ``gradwatch calibrate``
    fits; none by default)."""
    expected = set(computable_scores(fitted_scores or {}))
    if (out / "scores").exists() and not expected <= set(OutputStore(str(out)).read_table("scores").column_names):
        shutil.rmtree(out)  # scored by an older version, before a score was registered
    if not (out / "scores").exists():
        config = ScoringConfig(
            source=str(folder), out=str(out), scoring=ScoringSettings(model=model), fitted_scores=fitted_scores or {}
        )
        summary = run_scoring(config)
        print(
            f"  {folder.resolve().name}: {summary.scored} scored, {summary.rejected.total()} rejected "
            f"({summary.images_per_second:.0f} images/s)"
        )
    return OutputStore(str(out)).read_table("scores")


def score_columns(table: pa.Table, names: list[str]) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy() for name in names}


def top1(table: pa.Table, labels_csv: Path) -> float:
    with labels_csv.open() as file:
        labels = {row["file"]: int(row["class_index"]) for row in csv.DictReader(file)}
    rows = [row for row in table.select(["uri", "pred"]).to_pylist() if Path(row["uri"]).name in labels]
    return float(np.mean([row["pred"] == labels[Path(row["uri"]).name] for row in rows]))


def images_per_second(run: Callable[[], object], count: int, device: torch.device) -> float:
    """Images per second of one call of ``run``, waiting for the GPU's queue before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def head_outputs(folder: Path, cache: Path, model: str) -> dict[str, np.ndarray]:
    """Every image's penultimate features and logits (float64, fp32 forward pass), by file name, cached in
    ``cache`` (an .npz): what fitted scores and the feature projection are fitted on and computed from, per split."""
    if not cache.exists():
        loaded = load_model(model)
        files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        features, logits = [], []
        for start in range(0, len(files), 16):
            batch = torch.stack(
                [
                    loaded.preprocessing.to_tensor(decode_image(path.read_bytes(), source=str(path)))
                    for path in files[start : start + 16]
                ]
            )
            with torch.inference_mode():
                h, z = loaded.forward_to_head(batch.contiguous(memory_format=torch.channels_last))
            features.append(h.double().numpy())
            logits.append(z.double().numpy())
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            features=np.concatenate(features),
            logits=np.concatenate(logits),
            files=np.array([path.name for path in files]),
        )
    stored = np.load(cache)
    return {"files": stored["files"], "features": stored["features"], "logits": stored["logits"]}
