"""The scoring pipeline: SOURCE -> per-image scores, per-window statistics and rejections in Parquet.

    List (the source's own listing) -> ReadImages (dead letter) -> ScoreImages: decode + score (dead letter)
        -> WindowTables: event-time fixed windows -> WriteTables: scores/ and rejected/, and windows/ with the
        per (window, segment) statistics computed from them

The same code runs on the embedded FnApiRunner (default, offline), on N local worker processes, and on
Flink, Spark or Dataflow through pass-through pipeline options.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.execution import MetricResult
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.inference import ScoreImages, ScorerModelHandler
from pipelines.read import ReadImages
from pipelines.records import REJECTED, REJECTED_SCHEMA, WINDOWS_SCHEMA, measured_columns, scores_schema
from pipelines.redaction import redact_logs
from pipelines.settings import PipelineSettings
from pipelines.sinks import WriteTables
from pipelines.sources import Source, open_source
from pipelines.store import OutputStore
from pipelines.times import PlausibleTimes, align_to_windows
from pipelines.windows import WindowStatistics, WindowTables
from scoring import LoadedModel, ScoringSettings, load_model, resolve_device
from scoring.decoding import DeviceJpegDecoder
from scoring.features import FEATURES
from scoring.properties import registered_properties
from scoring.scores import computable_scores


@dataclass(frozen=True)
class ScoringConfig:
    """One scoring run: which images, into which OUT and windows, scored and run how."""

    source: str
    out: str
    # Hourly windows: enough images per window for a test with power, and an alert within the hour.
    window: dt.timedelta = dt.timedelta(hours=1)
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    scoring: ScoringSettings = ScoringSettings()
    pipeline: PipelineSettings = PipelineSettings()
    # What the scores fitted on a calibration's reference learned there; such scores are not computed without it.
    fitted_scores: dict[str, Any] = field(default_factory=dict)
    # A local folder where workers tick off each image they finish, for a live count (local runners only).
    progress_dir: str | None = None
    # Event times an image can have; images outside are rejected, never placed in a window.
    plausible: PlausibleTimes = PlausibleTimes()

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"since ({self.since}) must be before until ({self.until})")

    def aligned_range(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        return align_to_windows(self.since, self.until, self.window)


@dataclass
class RunSummary:
    """The reconciliation of one run: every listed image is scored or rejected."""

    listed: int
    scored: int
    rejected: Counter[str] = field(default_factory=Counter)  # "stage/reason" -> count
    windows: int = 0
    seconds: float = 0.0
    model_id: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @property
    def reconciled(self) -> bool:
        return self.listed == self.scored + self.rejected.total()

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


def build_pipeline(
    pipeline: beam.Pipeline, config: ScoringConfig, *, model_id: str, max_bytes: int, staging: str
) -> None:
    """Add the scoring transforms to ``pipeline``.

    Args:
        pipeline: the pipeline to extend.
        config: the run.
        model_id: the id rows are stamped with; workers refuse to score with other weights.
        max_bytes: the model's preprocessing limit, which bounds what is read.
        staging: the run's staging folder under OUT, which the caller removes after the run.
    """
    source = open_source(config.source)
    since, until = config.aligned_range()
    columns = measured_columns(tuple(computable_scores(config.fitted_scores)), tuple(registered_properties()))
    listed = pipeline | "List" >> source.listing()
    read = listed | "ReadImages" >> ReadImages(
        max_bytes=max_bytes, since=since, until=until, plausible=config.plausible
    )
    handler = _handler(config, model_id)
    scored = read.images | "ScoreImages" >> ScoreImages(handler, model_id=model_id, columns=columns)
    rejected = (read[REJECTED], scored[REJECTED]) | "AllRejected" >> beam.Flatten()
    if config.progress_dir:
        # Two ticks rather than a Flatten, so each runs fused into the stage that finishes the image.
        scored.rows | "TickScored" >> beam.ParDo(_TickProgress(config.progress_dir))
        rejected | "TickRejected" >> beam.ParDo(_TickProgress(config.progress_dir))
    tables = (scored.rows, rejected) | "WindowTables" >> WindowTables(window=config.window)
    keeps_features = FEATURES in config.fitted_scores
    schemas = {
        "scores": scores_schema(columns, keeps_features=keeps_features),
        "windows": WINDOWS_SCHEMA,
        REJECTED: REJECTED_SCHEMA,
    }
    written = tables | "WriteTables" >> WriteTables(
        OutputStore(config.out),
        schemas=schemas,
        part=source.key,
        staging=staging,
        derived={"windows": WindowStatistics(window=config.window, columns=columns, model_id=model_id)},
        replaces=source.former_keys,
    )
    written | "CountWindows" >> beam.Map(lambda _: Metrics.counter("gradwatch", "windows").inc())


def _handler(config: ScoringConfig, model_id: str) -> ScorerModelHandler:
    on_gpu = resolve_device(config.scoring.device).type == "cuda"
    return ScorerModelHandler(
        config.scoring,
        expected_model_id=model_id,
        fitted_scores=config.fitted_scores,
        cpu_threads=config.pipeline.cpu_threads(),
        large_model=config.pipeline.large_model or (on_gpu and config.pipeline.workers > 1),
    )


class _TickProgress(beam.DoFn):
    """Appends one byte per finished image to a file of its own, so a watcher can sum file sizes."""

    def __init__(self, progress_dir: str) -> None:
        self._progress_dir = progress_dir

    def setup(self) -> None:
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._file = open(os.path.join(self._progress_dir, name), "ab", buffering=0)  # noqa: SIM115 - closed in teardown

    def process(self, element: Any) -> Iterable[Any]:
        # Emits nothing, as an empty iterable: Beam 2.78 refuses a process() whose return hint is None.
        self._file.write(b".")
        return ()

    def teardown(self) -> None:
        self._file.close()


def count_progress(progress_dir: str) -> int:
    """Images finished so far, scored or rejected, by the workers ticking into ``progress_dir``."""
    with os.scandir(progress_dir) as entries:
        return sum(entry.stat().st_size for entry in entries)


def counter_totals(counters: Iterable[MetricResult]) -> Counter[str]:
    """Each counter's total over the steps that count it (one result per step).

    Committed values where the runner reports them, else attempted ones (Beam's ``MetricResult.result``): a runner
    without committed metrics reports None there (Beam's Kafka Streams runner, apache/beam#39635), which read as 0
    would reconcile any run as "0 listed = 0 scored + 0 rejected: ok".
    """
    totals: Counter[str] = Counter()
    for counter in counters:
        totals[counter.key.metric.name] += counter.result or 0
    return totals


def run_scoring(config: ScoringConfig, *, loaded: LoadedModel | None = None) -> RunSummary:
    """Run the pipeline to completion and reconcile what went in with what came out.

    Args:
        config: the run.
        loaded: the model ``config.scoring.model`` names, when the caller has it loaded already (the monitor runs
            one pipeline per window); otherwise it is loaded here for its id and preprocessing.

    Raises:
        SourceError: SOURCE is not there (checked before any worker starts).
        ModelSpecError: the model cannot be loaded (likewise).
        DecoderUnavailableError: ``decoder="device"`` on the local runner without torchvision (likewise).
        RunnerError: Beam has no such runner (likewise).
    """
    redact_logs()
    source: Source = open_source(config.source)
    source.check()
    config.pipeline.check()
    # Loaded here for its id and preprocessing, so a bad spec fails before the pipeline starts.
    loaded = loaded or load_model(config.scoring.model)
    if config.scoring.decoder == "device" and config.pipeline.is_local:
        # Local workers import what this process does: a missing torchvision fails here, not in every worker.
        DeviceJpegDecoder(loaded.preprocessing, resolve_device(config.scoring.device))
    started = time.perf_counter()
    runner = FnApiRunner() if config.pipeline.is_local else None
    pipeline = beam.Pipeline(runner=runner, options=config.pipeline.options())
    staging = uuid.uuid4().hex
    build_pipeline(
        pipeline, config, model_id=loaded.model_id, max_bytes=loaded.preprocessing.max_bytes, staging=staging
    )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        OutputStore(config.out).remove_staging(staging)
    counters = counter_totals(result.metrics().query(MetricsFilter().with_namespace("gradwatch"))["counters"])
    since, until = config.aligned_range()
    return RunSummary(
        listed=counters.get("listed", 0),
        scored=counters.get("scored", 0),
        rejected=Counter(
            {name.removeprefix("rejected/"): count for name, count in counters.items() if name.startswith("rejected/")}
        ),
        windows=counters.get("windows", 0),
        seconds=time.perf_counter() - started,
        model_id=loaded.model_id,
        since=since,
        until=until,
    )
