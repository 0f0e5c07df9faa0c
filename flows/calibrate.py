"""Calibrating thresholds from reference images, through the scoring pipeline, into the registry."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
from collections.abc import Mapping, Sequence
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.plots import reference_histograms, validation_plots
from flows.registry import ThresholdRegistry, ThresholdVersion
from flows.scratch import owned_temp_dir
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.read import PermanentReadError, open_image_file
from pipelines.records import ImageRef, table_values
from pipelines.redaction import redact
from pipelines.settings import PipelineSettings
from pipelines.sources import image_identity, open_source
from pipelines.store import OutputStore
from pipelines.times import PlausibleTimes
from scoring import GradwatchError, ScoringSettings, UnusableReferenceError, decision_scores, load_scorer
from scoring.calibration import Calibration, CalibrationConfig, calibrate, decision_sides
from scoring.models import model_name

# A reference is not monitored in time: its images' times (copied files, an archive of the nineties) decide nothing.
ANY_TIME = PlausibleTimes(earliest=dt.datetime(1, 1, 2, tzinfo=dt.UTC), ahead=dt.timedelta(days=365 * 1000))


def score_source(
    source: str,
    out: Path,
    *,
    scoring: ScoringSettings,
    pipeline: PipelineSettings,
    fitted_scores: Mapping[str, Any],
    outputs_kept: bool = True,
) -> tuple[pa.Table, str]:
    """Score a folder, prefix or manifest with the pipeline; returns its scores table and the model id.

    ``outputs_kept`` False says ``out`` is a temporary folder, gone by the time an error is read.
    """
    config = ScoringConfig(
        source=source,
        out=str(out),
        scoring=scoring,
        pipeline=pipeline,
        fitted_scores=dict(fitted_scores),
        plausible=ANY_TIME,
    )
    summary = run_scoring(config)
    table = OutputStore(str(out)).read_table("scores")
    if table.num_rows == 0:
        where = f"see {out}/rejected" if outputs_kept else "calibrate with --out DIR to keep DIR/rejected"
        raise GradwatchError(
            f"none of the {summary.listed} images in {redact(source)} could be scored "
            f"({dict(summary.rejected)}); {where} for the reasons"
        )
    return table, summary.model_id


def fit_scores(reference: str, *, scoring: ScoringSettings, config: CalibrationConfig) -> tuple[dict, set[str]]:
    """Fit the registered scores that learn from the reference, on the part of it set aside for them.

    Returns:
        What each fitted score and the feature projection learned, and the URIs of the images they learned from (to
        leave out of the thresholds).
    """
    # By identity, as the scores table names them; read by the URI as listed, credentials and all.
    listed = {
        image_identity(entry.uri): entry.uri for entry in open_source(reference).list() if isinstance(entry, ImageRef)
    }
    fit_uris = config.fits_on(listed)
    ordered, images = [], []
    for uri in sorted(fit_uris):
        fs, path = fsspec.core.url_to_fs(listed[uri])
        try:
            with open_image_file(fs, path) as file:
                images.append(file.read())
        except (OSError, PermanentReadError):  # the pipeline rejects it with its reason when it scores the reference
            continue
        ordered.append(uri)
    try:
        states = load_scorer(scoring).fit_scores(images, sources=ordered)
    except UnusableReferenceError as error:
        raise UnusableReferenceError(f"reference {redact(reference)}: {error}") from None
    return states, fit_uris


def calibrate_reference(
    reference: str,
    *,
    registry: ThresholdRegistry,
    scoring: ScoringSettings = ScoringSettings(),
    pipeline: PipelineSettings = PipelineSettings(),
    score: str = "gradnorm",
    config: CalibrationConfig | None = None,
    validation_ood: Sequence[str] = (),
    work_dir: Path | None = None,
) -> tuple[ThresholdVersion, Calibration]:
    """Score the reference (and validation sets), calibrate, and propose the result for review.

    Args:
        reference: healthy images: a folder, prefix or manifest, as for ``gradwatch score``.
        registry: where the calibration run and the proposed version go.
        scoring: how images are scored; monitoring must score with the same score-defining settings.
        pipeline: where the scoring pipeline runs.
        score: the score the operator leads with; the guardrail warns when it is weak.
        config: TPR, alpha, minimum window size and the false-alarm check (default: CalibrationConfig()).
        validation_ood: folders of known-shifted images for the guardrail's separation table.
        work_dir: where the pipeline writes its outputs (default: a temporary folder, removed when it returns or
            raises).

    Returns:
        The proposed version (alias ``candidate``) and the calibration.
    """
    config = config or CalibrationConfig()
    if score not in decision_scores():
        raise GradwatchError(f"--score {score!r} is not one of the decision scores {decision_scores()}")
    with contextlib.ExitStack() as scratch:
        # The pipeline's outputs matter only until the run is recorded in MLflow: a folder of our own goes after.
        work = work_dir or scratch.enter_context(owned_temp_dir("calibrate"))
        fitted, fit_uris = fit_scores(reference, scoring=scoring, config=config)
        run = {"scoring": scoring, "pipeline": pipeline, "fitted_scores": fitted, "outputs_kept": bool(work_dir)}
        scored, model_id = score_source(reference, work / "reference", **run)
        # What a fitted score learned from would look healthier to it than production does.
        table = scored.filter(pc.invert(pc.is_in(scored.column("uri"), pa.array(sorted(fit_uris), pa.string()))))
        names = [name for name in decision_sides() if name in table.column_names]
        validation = {}
        for folder in validation_ood:
            label = open_source(folder).name
            shifted, _ = score_source(folder, work / "validation" / label, **run)
            validation[label] = table_values(shifted, names)
        calibration = calibrate(
            table_values(table, names),
            model_id=model_id,
            segments=table.column("segment").to_pylist(),
            validation=validation,
            primary_score=score,
            config=config,
            scoring=scoring.recorded(),
            fitted_scores=fitted,
        )
        params = _params(reference, table, scoring, pipeline, score, config, validation, fitted_images=len(fit_uris))
        name = model_name(scoring.model)
        today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
        run_name = f"calibrate {name} on {open_source(reference).name} ({table.num_rows} images, {today})"
        version = registry.propose(
            calibration, model_name=name, params=params, artifacts=_artifacts(table, calibration, validation),
            run_name=run_name,
        )  # fmt: skip
    return version, calibration


def _params(
    reference: str,
    table: pa.Table,
    scoring: ScoringSettings,
    pipeline: PipelineSettings,
    score: str,
    config: CalibrationConfig,
    validation: Mapping[str, Any],
    *,
    fitted_images: int,
) -> dict[str, Any]:
    """What a reviewer sees as the calibration run's parameters."""
    image_ids = sorted(table.column("image_id").to_pylist())
    return {
        "model_spec": redact(scoring.model),  # ?weights=https://user:token@... would carry a credential
        "score": score,
        "tpr": config.tpr,
        "alpha": config.alpha,
        "min_window": config.min_window,
        **scoring.recorded(),
        **pipeline.described(),
        "reference_source": redact(reference),
        "reference_images": table.num_rows,
        "reference_sha256": hashlib.sha256("\n".join(image_ids).encode()).hexdigest(),
        "fitted_score_images": fitted_images,
        "validation_sets": ",".join(validation) or "-",
        "gradwatch_version": installed_version("gradwatch"),
    }


def _artifacts(
    table: pa.Table, calibration: Calibration, validation: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, bytes]:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return {
        "reference/scores.parquet": buffer.getvalue(),
        "plots/reference_histograms.png": reference_histograms(calibration),
        **validation_plots(calibration, validation),
    }
