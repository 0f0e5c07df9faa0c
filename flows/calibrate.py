"""Calibrating thresholds from reference images, through the scoring pipeline, into the registry."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import tempfile
from collections.abc import Sequence
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.plots import reference_histograms, validation_plots
from flows.registry import ThresholdRegistry, ThresholdVersion, redact
from pipelines.outputs import read_table
from pipelines.pipeline import ScoringConfig, run_scoring
from scoring import GradwatchError, decision_scores
from scoring.calibration import Calibration, CalibrationConfig, calibrate
from scoring.models import model_name


def score_source(source: str, out: Path, model: str, **scoring: Any) -> tuple[pa.Table, str]:
    """Score a folder, prefix or manifest with the pipeline; returns its scores table and the model id.

    ``scoring`` holds further :class:`ScoringConfig` fields (device, precision, decoder, workers).
    """
    summary = run_scoring(ScoringConfig(source=source, out=str(out), model=model, **scoring))
    table = read_table(str(out), "scores")
    if table.num_rows == 0:
        raise GradwatchError(
            f"none of the {summary.listed} images in {redact(source)} could be scored "
            f"({dict(summary.rejected)}); see {out}/rejected for the reasons"
        )
    return table, summary.model_id


def calibrate_reference(
    reference: str,
    *,
    registry: ThresholdRegistry,
    model: str = "efficientnet-lite0",
    score: str = "gradnorm",
    config: CalibrationConfig | None = None,
    validation_ood: Sequence[str] = (),
    work_dir: Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    decoder: str = "host",
    workers: int = 1,
) -> tuple[ThresholdVersion, Calibration]:
    """Score the reference (and validation sets), calibrate, and propose the result for review.

    Args:
        reference: healthy images: a folder, prefix or manifest, as for ``gradwatch score``.
        registry: where the calibration run and the proposed version go.
        model: model spec.
        score: the score the operator leads with; the guardrail warns when it is weak.
        config: TPR, alpha, minimum window size and the false-alarm check (default: CalibrationConfig()).
        validation_ood: folders of known-shifted images for the guardrail's separation table.
        work_dir: where the pipeline writes its outputs (default: a temporary folder).
        device: where the network runs, as for ``gradwatch score``.
        precision: fp32, fp16 or bf16: monitoring must compute scores in the same precision.
        decoder: host or device JPEG decoding: monitoring must decode the same way.
        workers: local worker processes.

    Returns:
        The proposed version (alias ``candidate``) and the calibration.
    """
    config = config or CalibrationConfig()
    if score not in decision_scores():
        raise GradwatchError(f"--score {score!r} is not one of the decision scores {decision_scores()}")
    work = work_dir or Path(tempfile.mkdtemp(prefix="gradwatch-calibrate-"))
    scoring = {"device": device, "precision": precision, "decoder": decoder, "workers": workers}
    table, model_id = score_source(reference, work / "reference", model, **scoring)
    names = decision_scores()
    columns = {name: table.column(name).to_numpy() for name in names}
    validation = {}
    for folder in validation_ood:
        label = Path(folder.rstrip("/")).name or folder
        shifted, _ = score_source(folder, work / "validation" / label, model, **scoring)
        validation[label] = {name: shifted.column(name).to_numpy() for name in names}
    calibration = calibrate(
        columns,
        model_id=model_id,
        segments=table.column("segment").to_pylist(),
        validation=validation,
        primary_score=score,
        config=config,
        precision=precision,
        decoder=decoder,
    )
    image_ids = sorted(table.column("image_id").to_pylist())
    params = {
        "model_spec": model,
        "score": score,
        "tpr": config.tpr,
        "alpha": config.alpha,
        "min_window": config.min_window,
        "precision": precision,
        "decoder": decoder,
        "reference_source": redact(reference),
        "reference_images": table.num_rows,
        "reference_sha256": hashlib.sha256("\n".join(image_ids).encode()).hexdigest(),
        "validation_sets": ",".join(validation) or "-",
        "gradwatch_version": installed_version("gradwatch"),
    }
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    artifacts = {
        "reference/scores.parquet": buffer.getvalue(),
        "plots/reference_histograms.png": reference_histograms(calibration),
        **validation_plots(calibration, validation),
    }
    name = model_name(model)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    run_name = f"calibrate {name} on {Path(reference.rstrip('/')).name} ({table.num_rows} images, {today})"
    version = registry.propose(calibration, model_name=name, params=params, artifacts=artifacts, run_name=run_name)
    return version, calibration
