"""The scoring pipeline: SOURCE -> per-image scores, per-window statistics and rejections in Parquet.

    list (parallel) -> read (dead letter) -> RunInference: decode + score (dead letter) -> event-time fixed windows
        -> per (window, segment) CombineFn -> window-partitioned Parquet: scores/, windows/, rejected/

The same code runs on the embedded FnApiRunner (default, offline), on N local worker processes, and on
Flink, Spark or Dataflow through pass-through pipeline options.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import window as beam_window

from pipelines.inference import ScorerModelHandler
from pipelines.read import ReadImage
from pipelines.records import (
    REJECTED_SCHEMA,
    WINDOWS_SCHEMA,
    Rejected,
    scores_schema,
    window_label,
)
from pipelines.sinks import WritePartition
from pipelines.sources import REJECTED, SUBTREE, ExpandSource, ListSubtree, check_source
from pipelines.windows import WindowStatsFn, align_to_windows, window_rows
from scoring import (
    DECODERS,
    PRECISIONS,
    ImageDecodeError,
    LoadedModel,
    Preprocessing,
    load_model,
    registered_scores,
    resolve_device,
)
from scoring.decoding import DeviceJpegDecoder

LOCAL_RUNNER = "local"


@dataclass(frozen=True)
class ScoringConfig:
    """One scoring run. Defaults suit a laptop or a single CPU worker."""

    source: str
    out: str
    # Hourly windows: enough images per window for a test with power, and an alert within the hour.
    window: dt.timedelta = dt.timedelta(hours=1)
    model: str = "efficientnet-lite0"
    device: str = "auto"
    # None picks by device: 32 on CPU (the scorer runs 4 at a time anyway), 256 on a GPU.
    batch_size: int | None = None
    temperature: float = 1.0
    # fp16/bf16 run the network on tensor cores at about twice fp32's speed; fp32 is exact and the CPU default.
    precision: str = "fp32"
    # torch.compile pays tens of seconds per worker to compile: worth it on a GPU for long runs only.
    compile: bool = False
    # "device" decodes JPEGs on the GPU (needs torchvision): host decoding is what bounds a GPU worker.
    decoder: str = "host"
    # Local worker processes; 1 runs everything in this process, which starts fastest.
    workers: int = 1
    # "local" is the embedded FnApiRunner: it works offline, unlike DirectRunner's Prism download.
    runner: str = LOCAL_RUNNER
    # KEY=VALUE pipeline options passed through to Beam, e.g. flink_master=host:8081.
    beam_options: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # Share one model per machine between worker processes (one GPU, one copy); always so for several local
    # processes on a GPU, where a copy each would split its memory and contend for it.
    large_model: bool = False
    # A local folder where workers tick off each image they finish, for a live count (local runners only).
    progress_dir: str | None = None

    def __post_init__(self) -> None:
        for option in self.beam_options:
            key, separator, _ = option.partition("=")
            if not separator or not key.strip("-"):
                raise ValueError(f"--beam-option {option!r} must be KEY=VALUE, e.g. flink_master=localhost:8081")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
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


def read_options_file(path: str | os.PathLike) -> tuple[str, ...]:
    """KEY=VALUE pipeline options, one per line; blank lines and ``#`` comments are skipped."""
    with open(path) as file:
        lines = [line.strip() for line in file]
    return tuple(line for line in lines if line and not line.startswith("#"))


def pipeline_options(config: ScoringConfig) -> PipelineOptions:
    options = PipelineOptions([f"--{option.lstrip('-')}" for option in config.beam_options])
    if config.runner == LOCAL_RUNNER:
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = config.workers
        direct.direct_running_mode = "multi_processing" if config.workers > 1 else "in_memory"
    else:
        options.view_as(StandardOptions).runner = config.runner
    # Workers import gradwatch from the installed package, not from a pickled __main__.
    options.view_as(SetupOptions).save_main_session = False
    return options


def build_pipeline(
    pipeline: beam.Pipeline,
    config: ScoringConfig,
    *,
    model_id: str,
    preprocessing: Preprocessing,
    score_names: tuple[str, ...],
) -> None:
    """Add the scoring transforms to ``pipeline``.

    Args:
        pipeline: the pipeline to extend.
        config: the run.
        model_id: the id rows are stamped with; workers refuse to score with other weights.
        preprocessing: the model's input pipeline; its byte limit bounds what is read.
        score_names: the score columns, in order.
    """
    since, until = config.aligned_range()
    device = resolve_device(config.device)
    batch_size = config.batch_size or (32 if device.type == "cpu" else 256)
    cpu_threads = max(1, (os.cpu_count() or 1) // config.workers) if config.runner == LOCAL_RUNNER else None
    handler = ScorerModelHandler(
        config.model,
        expected_model_id=model_id,
        device=config.device,
        temperature=config.temperature,
        precision=config.precision,
        compile=config.compile,
        decoder=config.decoder,
        min_batch_size=min(batch_size, 4),
        max_batch_size=batch_size,
        cpu_threads=cpu_threads,
        large_model=config.large_model or (device.type == "cuda" and config.workers > 1),
    )
    window_seconds = config.window.total_seconds()

    top_level = (
        pipeline
        | "Source" >> beam.Create([config.source])
        | "ListTopLevel" >> beam.ParDo(ExpandSource()).with_outputs(SUBTREE, REJECTED, main="refs")
    )
    nested = top_level[SUBTREE] | "SpreadFolders" >> beam.Reshuffle() | "ListFolders" >> beam.ParDo(ListSubtree())
    read = (
        (top_level.refs, nested)
        | "AllRefs" >> beam.Flatten()
        | "SpreadImages" >> beam.Reshuffle()
        | "Read"
        >> beam.ParDo(ReadImage(max_bytes=preprocessing.max_bytes, since=since, until=until)).with_outputs(
            REJECTED, main="images"
        )
    )
    outcomes = (
        read.images
        | "Score" >> RunInference(handler)
        | "ToScoreRows"
        >> beam.ParDo(_ScoreRows(model_id=model_id, score_names=score_names)).with_outputs(REJECTED, main="rows")
    )
    scored_rows = outcomes.rows
    scored = (
        scored_rows
        | "ScoresEventTime" >> beam.Map(lambda row: beam_window.TimestampedValue(row, row["event_time"].timestamp()))
        | "ScoresWindows" >> beam.WindowInto(beam_window.FixedWindows(window_seconds))
    )
    rejected = (top_level[REJECTED], read[REJECTED], outcomes[REJECTED]) | "AllRejected" >> beam.Flatten()
    if config.progress_dir:
        # Two ticks rather than a Flatten, so each runs fused into the stage that finishes the image.
        scored_rows | "TickScored" >> beam.ParDo(_TickProgress(config.progress_dir))
        rejected | "TickRejected" >> beam.ParDo(_TickProgress(config.progress_dir))
    rejected_timed = (
        rejected
        | "KnownTime" >> beam.Filter(lambda rejection: rejection.event_time is not None)
        | "RejectedEventTime"
        >> beam.Map(lambda rejection: beam_window.TimestampedValue(rejection, rejection.event_time.timestamp()))
        | "RejectedWindows" >> beam.WindowInto(beam_window.FixedWindows(window_seconds))
    )

    window_stats = (
        (
            scored | "ScoresBySegment" >> beam.Map(lambda row: (row["segment"], {n: row[n] for n in score_names})),
            rejected_timed | "RejectedBySegment" >> beam.Map(lambda rejection: (rejection.segment, None)),
        )
        | "StatsInputs" >> beam.Flatten()
        | "WindowStats" >> beam.CombinePerKey(WindowStatsFn(score_names))
        | "WindowRows" >> beam.ParDo(_LabelWindowRows(model_id))
    )
    scores_labelled = scored | "LabelScores" >> beam.ParDo(_LabelByWindow())
    rejected_labelled = (
        rejected_timed
        | "LabelRejected" >> beam.ParDo(_LabelByWindow())
        | "RejectedTimedToGlobal" >> beam.WindowInto(beam_window.GlobalWindows()),
        rejected
        | "UnknownTime" >> beam.Filter(lambda rejection: rejection.event_time is None)
        | "LabelUnknown" >> beam.Map(lambda rejection: (window_label(None), _rejected_row(rejection))),
    ) | "AllRejectedRows" >> beam.Flatten()
    tables = {
        "scores": (scores_labelled, scores_schema(score_names)),
        "windows": (window_stats, WINDOWS_SCHEMA),
        "rejected": (rejected_labelled, REJECTED_SCHEMA),
    }
    for table, (rows, schema) in tables.items():
        written = (
            rows
            | f"{table}GlobalWindow" >> beam.WindowInto(beam_window.GlobalWindows())
            | f"{table}ByWindow" >> beam.GroupByKey()
            | f"Write{table}" >> beam.ParDo(WritePartition(config.out, table, schema, config.source))
        )
        if table == "windows":
            written | "CountWindows" >> beam.Map(lambda _: Metrics.counter("gradwatch", "windows").inc())


class _ScoreRows(beam.DoFn):
    """PredictionResult -> a scores row (main), or a decode Rejected (``rejected``) for an image that failed."""

    def __init__(self, *, model_id: str, score_names: Sequence[str]) -> None:
        self._model_id = model_id
        self._score_names = tuple(score_names)

    def process(self, result: PredictionResult) -> Iterator[Any]:
        image, outcome = result.example, result.inference
        if isinstance(outcome, ImageDecodeError):
            rejection = Rejected(image.uri, image.event_time, "decode", outcome.reason, str(outcome), image.segment)
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
            return
        Metrics.counter("gradwatch", "scored").inc()
        yield {
            "image_id": image.image_id,
            "uri": image.uri,
            "event_time": image.event_time,
            "segment": image.segment,
            "model_id": self._model_id,
            **{name: outcome[name] for name in self._score_names},
            "pred": outcome["pred"],
        }


def _rejected_row(rejection: Rejected) -> dict[str, Any]:
    Metrics.counter("gradwatch", f"rejected/{rejection.stage}/{rejection.reason}").inc()
    return {
        "uri": rejection.uri,
        "event_time": rejection.event_time,
        "segment": rejection.segment,
        "stage": rejection.stage,
        "reason": rejection.reason,
        "error": rejection.error,
    }


class _LabelByWindow(beam.DoFn):
    """Row (or rejection) -> (its window's partition label, row)."""

    def process(self, element: Any, window: beam_window.IntervalWindow = beam.DoFn.WindowParam):
        row = _rejected_row(element) if isinstance(element, Rejected) else element
        yield window_label(window.start.to_utc_datetime(has_tz=True)), row


class _LabelWindowRows(beam.DoFn):
    def __init__(self, model_id: str) -> None:
        self._model_id = model_id

    def process(self, element, window: beam_window.IntervalWindow = beam.DoFn.WindowParam):
        segment, accumulator = element
        label = window_label(window.start.to_utc_datetime(has_tz=True))
        for row in window_rows(segment, accumulator, window.end.to_utc_datetime(has_tz=True), self._model_id):
            yield label, row


class _TickProgress(beam.DoFn):
    """Appends one byte per finished image to a file of its own, so a watcher can sum file sizes."""

    def __init__(self, progress_dir: str) -> None:
        self._progress_dir = progress_dir

    def setup(self) -> None:
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._file = open(os.path.join(self._progress_dir, name), "ab", buffering=0)  # noqa: SIM115 - closed in teardown

    def process(self, element: Any) -> None:
        self._file.write(b".")

    def teardown(self) -> None:
        self._file.close()


def count_progress(progress_dir: str) -> int:
    """Images finished so far, scored or rejected, by the workers ticking into ``progress_dir``."""
    with os.scandir(progress_dir) as entries:
        return sum(entry.stat().st_size for entry in entries)


def run_scoring(config: ScoringConfig, *, loaded: LoadedModel | None = None) -> RunSummary:
    """Run the pipeline to completion and reconcile what went in with what came out.

    Args:
        config: the run.
        loaded: the model ``config.model`` names, when the caller has it loaded already (the monitor runs one
            pipeline per window); otherwise it is loaded here for its id and preprocessing.

    Raises:
        SourceError: SOURCE is not there (checked before any worker starts).
        ModelSpecError: the model cannot be loaded (likewise).
        DecoderUnavailableError: ``decoder="device"`` on the local runner without torchvision (likewise).
    """
    check_source(config.source)
    # Loaded here for its id and preprocessing, so a bad spec fails before the pipeline starts.
    loaded = loaded or load_model(config.model)
    if config.decoder == "device" and config.runner == LOCAL_RUNNER:
        # Local workers import what this process does: a missing torchvision fails here, not in every worker.
        DeviceJpegDecoder(loaded.preprocessing, resolve_device(config.device))
    score_names = tuple(registered_scores())
    options = pipeline_options(config)
    started = time.perf_counter()
    runner = FnApiRunner() if config.runner == LOCAL_RUNNER else None
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(
        pipeline, config, model_id=loaded.model_id, preprocessing=loaded.preprocessing, score_names=score_names
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters: Counter[str] = Counter()
    for counter in result.metrics().query(MetricsFilter().with_namespace("gradwatch"))["counters"]:
        counters[counter.key.metric.name] += counter.committed or 0  # one entry per step that counts
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
