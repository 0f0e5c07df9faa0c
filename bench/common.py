"""Helpers the evaluation scripts share: score folders through the Beam pipeline and read the result."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.store import OutputStore
from scoring import ScoringSettings

# ../shared/data beside the checkout; GRADWATCH_SHARED_DATA points elsewhere (a copy carried to a GPU machine).
SHARED = Path(os.environ.get("GRADWATCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def score_folder_with_pipeline(folder: Path, out: Path, model: str) -> pa.Table:
    """Run the scoring pipeline on ``folder`` (once: an existing OUT is reused) and return its scores."""
    if not (out / "scores").exists():
        summary = run_scoring(ScoringConfig(source=str(folder), out=str(out), scoring=ScoringSettings(model=model)))
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
