"""Calibrating thresholds from reference images, through the scoring pipeline, into the registry."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.plots import score_plots
from flows.registry import ThresholdRegistry, ThresholdVersion, registered_model_name
from flows.scratch import owned_temp_dir
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.read import PermanentReadError, open_image_file
from pipelines.records import ImageRef, table_values
from pipelines.redaction import redact
from pipelines.settings import PipelineSettings
from pipelines.sources import image_identity, open_source
from pipelines.store import OutputStore
from pipelines.times import UNKNOWN_WINDOW, PlausibleTimes, parse_window_label
from scoring import (
    GradwatchError,
    ScoringSettings,
    UnusableReferenceError,
    decision_scores,
    load_scorer,
    registered_scores,
)
from scoring.calibration import Calibration, CalibrationConfig, calibrate, decision_sides
from scoring.features import FEATURES
from scoring.models import model_name
from scoring.settings import RECORDED_ONLY, SCORE_DEFINING

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
    score: str | None = None,
    config: CalibrationConfig | None = None,
    validation_ood: Sequence[str] = (),
    work_dir: Path | None = None,
    labels: str | None = None,
) -> tuple[ThresholdVersion, Calibration]:
    """Score the reference (and validation sets), calibrate, and propose the result for review.

    Args:
        reference: healthy images: a folder, prefix or manifest, as for ``gradwatch score``.
        registry: where the calibration run and the proposed version go.
        scoring: how images are scored; monitoring must score with the same score-defining settings.
        pipeline: where the scoring pipeline runs.
        score: the score the operator leads with; the guardrail warns when it is weak. None: the guardrail's
            recommendation when validation sets are given, else GradNorm.
        config: TPR, alpha, minimum window size and the false-alarm check (default: CalibrationConfig()).
        validation_ood: folders of known-shifted images for the guardrail's separation table.
        work_dir: where the pipeline writes its outputs (default: a temporary folder, removed when it returns or
            raises).
        labels: a CSV of the reference's classes (see :func:`label_correctness`), for the reference's accuracy.

    Returns:
        The proposed version (alias ``candidate``) and the calibration.
    """
    config = config or CalibrationConfig()
    if score is not None and score not in decision_scores():
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
        correct = label_correctness(labels, table) if labels else None
        calibration = _calibrate_table(
            table, correct, f"reference {redact(reference)}: {{}}", model_id=model_id, validation=validation,
            primary_score=score, config=config, scoring=scoring.recorded(), fitted_scores=fitted,
        )  # fmt: skip
        params = {
            **_params(
                reference,
                table,
                scoring,
                pipeline,
                calibration.lead_score,
                config,
                validation,
                fitted_images=len(fit_uris),
            ),
            **_label_params(correct),
        }
        name = model_name(scoring.model)
        today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
        run_name = f"calibrate {name} on {open_source(reference).name} ({table.num_rows} images, {today})"
        version = registry.propose(
            calibration, model_name=name, params=params, artifacts=_artifacts(table, calibration, validation),
            run_name=run_name,
        )  # fmt: skip
    return version, calibration


@dataclass(frozen=True)
class ScoredPeriod:
    """The windows already scored into OUT whose starts lie in [since, until), with what decided each.

    Attributes:
        scores: their scores tables, with ``window_start`` (a UTC timestamp) as :meth:`OutputStore.read_table` has it.
        decisions: window start -> its decisions rows (one per SOURCE the monitor decided it for); a window
            scored by ``gradwatch score`` only has none.
    """

    out: str
    since: dt.datetime
    until: dt.datetime
    scores: pa.Table
    decisions: dict[dt.datetime, list[dict[str, Any]]]

    @property
    def windows(self) -> list[dt.datetime]:
        """The windows with scored images, in time order."""
        return sorted(set(self.scores.column("window_start").to_pylist())) if self.scores.num_rows else []

    @property
    def undecided(self) -> list[dt.datetime]:
        return [start for start in self.windows if not self.decisions.get(start)]

    def versions(self) -> dict[str, list[dt.datetime]]:
        """Threshold version -> the windows it decided."""
        decided: dict[str, list[dt.datetime]] = {}
        for start in self.windows:
            for version in sorted({row["threshold_version"] for row in self.decisions.get(start, [])}):
                decided.setdefault(version, []).append(start)
        return decided

    def flagged(self) -> dict[str, list[dt.datetime]]:
        """Windows a reference should not be made of without a look: decided as drift, or failing data quality."""
        found: dict[str, list[dt.datetime]] = {"drift": [], "data_quality": []}
        for start in self.windows:
            rows = self.decisions.get(start, [])
            if any(row["status"] == "drift" for row in rows):
                found["drift"].append(start)
            if any(not row["data_quality_passed"] for row in rows):
                found["data_quality"].append(start)
        return found

    def describe(self) -> str:
        return f"{redact(self.out)} in [{iso_utc(self.since)}, {iso_utc(self.until)})"


def read_period(out: str, since: dt.datetime, until: dt.datetime) -> ScoredPeriod:
    """The windows of OUT that start in [since, until): their scores and decisions, one partition at a time (OUT
    may hold months).

    Raises:
        GradwatchError: since is not before until.
    """
    if since >= until:
        raise GradwatchError(f"--since {iso_utc(since)} must be before --until {iso_utc(until)}")
    store = OutputStore(out)
    starts = [start for start in scored_windows(store) if since <= start < until]
    tables, decisions = [], {}
    for start in starts:
        rows = store.read_window("scores", start)
        if rows.num_rows:
            column = pa.array([start] * rows.num_rows, pa.timestamp("us", tz="UTC"))
            tables.append(rows.append_column("window_start", column))
        decided = store.read_window("decisions", start)
        decisions[start] = decided.select(_DECISION_COLUMNS).to_pylist() if decided.num_rows else []
    scores = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    return ScoredPeriod(out, since, until, scores, decisions)


def scored_windows(store: OutputStore) -> list[dt.datetime]:
    """The starts of the windows OUT holds scores of, in time order (their partitions' names, nothing read)."""
    root = store.path("scores")
    store.fs.invalidate_cache(root)
    if not store.fs.exists(root):
        return []
    labels = (posixpath.basename(path.rstrip("/")) for path in store.fs.ls(root, detail=False))
    return sorted(
        parse_window_label(label.removeprefix("window_start="))
        for label in labels
        if label.startswith("window_start=") and label != f"window_start={UNKNOWN_WINDOW}"
    )


# What the period's decisions tell about a window; the columns of every decisions file since gradwatch 0.1.
_DECISION_COLUMNS = ["status", "data_quality_passed", "model_id", "threshold_version"]


@dataclass(frozen=True)
class FittedState:
    """What the period's values were computed with, as far as its decisions tell."""

    fitted_scores: dict[str, Any]
    scoring: dict[str, Any]
    # The threshold versions ("3", "3,4") whose one fitted state the fitted values carry; None: none kept.
    version: str | None
    warnings: list[str]


def fitted_values() -> set[str]:
    """The values of a scores table that a fitted state computed: the fitted scores and the projected features."""
    return {name for name, score in registered_scores().items() if score.fit is not None} | {FEATURES}


def fitted_state(
    period: ScoredPeriod, registry: ThresholdRegistry, *, model: str, scoring: ScoringSettings
) -> FittedState:
    """The one fitted state and scoring settings the period's values share.

    A decided window's fitted values were computed with the fitted state of the version that decided it. Windows
    never decided (``gradwatch score`` only) have no known state: their fitted values, if any, are never guessed,
    so then only the values that need no fitted state are kept, for the whole period. The scoring settings are the
    deciding versions' (the monitor scores with those only), or where no version decided any window those the
    command was given (the scores table does not record them).

    Raises:
        GradwatchError: the period's versions differ in fitted state or scoring settings, naming the windows.
    """
    name = registered_model_name(model_name(model))
    versions = period.versions()
    documents = {version: registry.calibration(registry.get(name, version)) for version in versions}
    states = {version: json.dumps(document.fitted_scores, sort_keys=True) for version, document in documents.items()}
    # Only what moves scores: versions scored on torch and on onnxruntime (RECORDED_ONLY) give comparable values.
    settings = {
        version: {name: value for name, value in document.scoring.items() if name in SCORE_DEFINING}
        for version, document in documents.items()
    }
    for what, found in (("fitted states", states), ("scoring settings", settings)):
        if len({json.dumps(value, sort_keys=True) for value in found.values()}) > 1:
            raise GradwatchError(
                f"the windows of {period.describe()} were decided by {name} versions with different {what} "
                f"({_by_version(versions)}), so their values are not comparable; calibrate on the windows of one "
                "version with a narrower --since/--until"
            )
    recorded = next(iter(documents.values())).scoring if documents else scoring.recorded()
    fitted = next(iter(documents.values())).fitted_scores if documents else {}
    present = fitted_values() & set(period.scores.column_names)
    complete = set(fitted) <= present and all(period.scores.column(column).null_count == 0 for column in fitted)
    if period.undecided or not complete:
        reason = (
            f"{len(period.undecided)} window(s) of {period.describe()} were never decided "
            f"({_listed(period.undecided)}), so the fitted state of their values is unknown"
            if period.undecided
            else f"images of {period.describe()} lack the fitted values {sorted(fitted)}"
        )
        warning = (
            f"{reason}: calibrated without fitted scores or features ({', '.join(sorted(present)) or 'none scored'}), "
            "so these thresholds test neither; a period the monitor decided throughout keeps them"
        )
        return FittedState({}, dict(recorded), None, [warning])
    return FittedState(dict(fitted), dict(recorded), ",".join(sorted(versions, key=_version_order)), [])


def calibrate_from_out(
    out: str,
    *,
    since: dt.datetime,
    until: dt.datetime,
    registry: ThresholdRegistry,
    scoring: ScoringSettings = ScoringSettings(),
    score: str | None = None,
    config: CalibrationConfig | None = None,
    labels: str | None = None,
) -> tuple[ThresholdVersion, Calibration]:
    """Calibrate on windows already scored into OUT, without scoring anything again, and propose the result.

    The reference is what production sent in [since, until): the windows' scores, image properties, predictions
    and, when the period's fitted state is known (:func:`fitted_state`), its fitted scores and features, with that
    state carried into the new calibration so that monitoring goes on computing them alike.

    Args:
        out: the OUT ``gradwatch score`` or the monitor wrote.
        since, until: the windows whose starts lie in [since, until).
        registry: where the calibration run and the proposed version go, and the versions that decided the windows.
        scoring: the model (its name finds the versions); its precision, decoder and temperature are recorded only
            for a period no version decided.
        score: the score the operator leads with (None: GradNorm, as no validation sets are scored here).
        config, labels: as for :func:`calibrate_reference`.

    Returns:
        The proposed version (alias ``candidate``) and the calibration.

    Raises:
        GradwatchError: nothing scored in the period, mixed models or fitted states, too few images.
    """
    config = config or CalibrationConfig()
    if score is not None and score not in decision_scores():
        raise GradwatchError(f"--score {score!r} is not one of the decision scores {decision_scores()}")
    period = read_period(out, since, until)
    if not period.scores.num_rows:
        raise GradwatchError(
            f"no scored windows in {period.describe()}; pick a period 'gradwatch score' or the monitor wrote "
            "(OUT/scores/window_start=... names them)"
        )
    model_id = _one_model(period, scoring.model)
    state = fitted_state(period, registry, model=scoring.model, scoring=scoring)
    table = period.scores
    if state.version is None:
        table = table.drop_columns(sorted(fitted_values() & set(table.column_names)))
    correct = label_correctness(labels, table) if labels else None
    calibration = _calibrate_table(
        table, correct, f"windows of {period.describe()}: {{}}, or widen --since/--until", model_id=model_id,
        primary_score=score, config=config, scoring=state.scoring, fitted_scores=state.fitted_scores,
    )  # fmt: skip
    warnings = [*state.warnings, *_flag_warnings(period)]
    calibration = dataclasses.replace(calibration, warnings=[*warnings, *calibration.warnings])
    params = {
        **_params(out, table, scoring, None, calibration.lead_score, config, {}, fitted_images=0),
        **scoring_params(state.scoring),
        "reference_since": iso_utc(since),
        "reference_until": iso_utc(until),
        "reference_windows": len(period.windows),
        "reference_segments": _segment_counts(table),
        "fitted_from_version": state.version or "-",
        **_label_params(correct),
    }
    name = model_name(scoring.model)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    run_name = f"calibrate {name} on production {iso_utc(since)}..{iso_utc(until)} ({table.num_rows} images, {today})"
    version = registry.propose(
        calibration, model_name=name, params=params, artifacts=_artifacts(table, calibration, {}), run_name=run_name
    )
    return version, calibration


def scoring_params(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded scoring settings as run parameters, as ``ScoringSettings.recorded()`` names them."""
    return {key: recorded[key] for key in (*SCORE_DEFINING, *RECORDED_ONLY) if key in recorded}


def _one_model(period: ScoredPeriod, model: str) -> str:
    """The one model the period was scored with, which must be the one named."""
    ids = period.scores.column("model_id").to_pylist()
    windows = period.scores.column("window_start").to_pylist()
    found: dict[str, set[dt.datetime]] = {}
    for model_id, start in zip(ids, windows, strict=True):
        found.setdefault(model_id, set()).add(start)
    if len(found) > 1:
        listed = "; ".join(f"{model_id}: {_listed(sorted(starts))}" for model_id, starts in sorted(found.items()))
        raise GradwatchError(
            f"the windows of {period.describe()} were scored by different models ({listed}); calibrate on one "
            "model's windows with a narrower --since/--until"
        )
    (model_id,) = found
    if not model_id.startswith(f"{model_name(model)}@"):
        raise GradwatchError(
            f"the windows of {period.describe()} were scored by {model_id}, not by --model {redact(model)}; pass "
            "the --model they were scored with"
        )
    return model_id


def _flag_warnings(period: ScoredPeriod) -> list[str]:
    flagged = period.flagged()
    reasons = {"drift": "decided as drift", "data_quality": "failed data-quality gates"}
    return [
        f"{len(starts)} window(s) of {period.describe()} were {reasons[kind]} "
        f"({_listed(starts)}); a reference "
        "should be healthy production: check them, or narrow --since/--until"
        for kind, starts in flagged.items()
        if starts
    ]


def _segment_counts(table: pa.Table) -> str:
    """``segment:count`` for every segment, compact (MLflow params are short); ``-`` for a feed without segments."""
    counts = Counter(table.column("segment").to_pylist())
    if set(counts) <= {""}:
        return "-"
    return ",".join(f"{segment or '(none)'}:{count}" for segment, count in sorted(counts.items()))


def _by_version(versions: Mapping[str, Sequence[dt.datetime]]) -> str:
    return "; ".join(
        f"v{version}: {iso_utc(starts[0])}..{iso_utc(starts[-1])} ({len(starts)} windows)"
        for version, starts in sorted(versions.items(), key=lambda item: _version_order(item[0]))
    )


def _version_order(version: str) -> int:
    return int(version) if version.isdigit() else 0


def _listed(starts: Sequence[dt.datetime], shown: int = 5) -> str:
    """The first few windows by their starts, for a message that must stay one line."""
    return ", ".join(iso_utc(start) for start in starts[:shown]) + (" ..." if len(starts) > shown else "")


def iso_utc(moment: dt.datetime) -> str:
    """A time as messages and parameters show it: ``2026-11-26T13:00:00Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def label_correctness(labels: str, table: pa.Table) -> np.ndarray:
    """Per row of a scores table, 1.0 where its prediction (``pred``) is the image's label, 0.0 where it is not,
    NaN where the image has none.

    ``labels`` is a CSV with columns ``file`` and ``class_index``. A row names an image by its path relative to the
    CSV's folder (``cam-1/0007.jpg``), else by its file name alone (``0007.jpg``) when no other row has that name.

    Raises:
        GradwatchError: the file cannot be read, lacks a column, holds a class index that is not an integer or one
            file with two classes, or names none of the images; each names the file and the fix.
    """
    shown = redact(labels)
    try:
        with fsspec.open(labels, "r", encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError) as error:
        raise GradwatchError(f"--labels {shown} cannot be read ({error}); pass a UTF-8 CSV file") from None
    missing = {"file", "class_index"} - set(rows[0] if rows else {})
    if missing:
        raise GradwatchError(
            f"--labels {shown} lacks the column(s) {sorted(missing)}; it needs a header 'file,class_index' (the "
            "image's path relative to the CSV's folder, and its class index)"
        )
    by_path: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        name, text = (row["file"] or "").strip(), (row["class_index"] or "").strip()
        try:
            index = int(text)
        except ValueError:
            raise GradwatchError(
                f"--labels {shown} line {number}: class_index {text!r} of {name!r} is not an integer; write the "
                "class's index in the model's output"
            ) from None
        if by_path.setdefault(name, index) != index:
            raise GradwatchError(
                f"--labels {shown} gives {name!r} two classes ({by_path[name]} and {index}); keep one row per file"
            )
    # A file name two rows share (cam-1/0.jpg, cam-2/0.jpg) names no image by itself.
    shared = Counter(posixpath.basename(name) for name in by_path)
    by_name = {
        posixpath.basename(name): index for name, index in by_path.items() if shared[posixpath.basename(name)] == 1
    }
    folder = posixpath.dirname(image_identity(labels)) + "/"
    predictions = table.column("pred").to_pylist()
    correct = np.full(table.num_rows, np.nan)
    for row, (uri, pred) in enumerate(zip(table.column("uri").to_pylist(), predictions, strict=True)):
        label = by_path.get(uri[len(folder) :]) if uri.startswith(folder) else None
        label = by_name.get(posixpath.basename(uri)) if label is None else label
        if label is not None:
            correct[row] = float(pred == label)
    if np.isnan(correct).all():
        raise GradwatchError(
            f"--labels {shown} names none of the {table.num_rows} reference images (by path relative to "
            f"{redact(folder)}, or by file name); put the CSV in the images' folder, or name them as they are there"
        )
    return correct


def _label_params(correct: np.ndarray | None) -> dict[str, Any]:
    if correct is None:
        return {}
    labelled = correct[np.isfinite(correct)]
    return {"labelled_images": labelled.size, "reference_accuracy": round(float(labelled.mean()), 4)}


def _calibrate_table(table: pa.Table, correct: np.ndarray | None, refusal: str, **options: Any) -> Calibration:
    """Calibrate on a scores table's decision values and segments; ``refusal`` ("... {} ...") says whose images were
    too few (or too few labelled) when calibrate refuses them."""
    names = [name for name in decision_sides() if name in table.column_names]
    try:
        return calibrate(
            table_values(table, names), segments=table.column("segment").to_pylist(), correct=correct, **options
        )
    except ValueError as error:
        raise GradwatchError(refusal.format(error)) from None


def _params(
    reference: str,
    table: pa.Table,
    scoring: ScoringSettings,
    pipeline: PipelineSettings | None,
    score: str,
    config: CalibrationConfig,
    validation: Mapping[str, Any],
    *,
    fitted_images: int,
) -> dict[str, Any]:
    """What a reviewer sees as the calibration run's parameters; ``pipeline`` None when nothing was scored."""
    image_ids = sorted(table.column("image_id").to_pylist())
    return {
        "model_spec": redact(scoring.model),  # ?weights=https://user:token@... would carry a credential
        "score": score,
        "tpr": config.tpr,
        "alpha": config.alpha,
        "min_window": config.min_window,
        **scoring.recorded(),
        **(pipeline.described() if pipeline else {}),
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
        **score_plots(calibration, validation),
    }
