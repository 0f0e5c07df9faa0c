"""The monitoring job as plain functions: plan windows, gate, score, decide, record, log, alert.

Prefect's flows (flows/prefect_flows.py) are a thin layer over :func:`run_monitor`; tests call it directly.

A watermark kept with the outputs (``OUT/_state/watermark.json``) records each processed window with a
fingerprint of its images, so a restart resumes where it stopped, a processed window is not processed again,
and late images for a processed window change its fingerprint and get it re-processed (idempotently: its
outputs, decision and alerts are replaced or deduplicated, never doubled).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flows.alerts import Alert, AlertPolicy, Outbox, deliver_pending, targets_from
from flows.quality import GateResult, Gates, image_metadata
from flows.registry import ThresholdRegistry, redact
from pipelines.outputs import read_window
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.records import ImageRef, parse_window_label, window_label
from pipelines.sinks import WritePartition
from pipelines.sources import check_source, list_source, parse_event_time
from pipelines.windows import parse_window
from scoring import DECODERS, PRECISIONS, LoadedModel, decision_scores, load_model
from scoring.calibration import Calibration
from scoring.drift import WindowDecision

log = logging.getLogger("gradwatch.monitor")

DECISIONS_SCHEMA = pa.schema(
    [
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),  # drift, ok, insufficient_data, no_data
        ("is_drift", pa.bool_()),
        ("n", pa.int64()),
        ("n_rejected", pa.int64()),
        ("fired", pa.list_(pa.string())),
        ("data_quality_passed", pa.bool_()),
        ("data_quality_failures", pa.string()),  # JSON list of failed expectations
        ("decision", pa.string()),  # JSON: every test record and effect size
        ("model_id", pa.string()),
        ("threshold_version", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class MonitorConfig:
    """One monitoring run over SOURCE. Defaults suit an hourly scheduled deployment."""

    source: str
    out: str
    window: dt.timedelta = dt.timedelta(hours=1)
    model: str = "efficientnet-lite0"
    since: dt.datetime | None = None
    # None: up to the last complete window before now.
    until: dt.datetime | None = None
    webhooks: tuple[str, ...] = ()
    slack_webhooks: tuple[str, ...] = ()
    # A drift that lasts pages once, then reminds every this long, then sends "recovered".
    reminder_every: dt.timedelta = dt.timedelta(hours=6)
    # Re-process windows already in the watermark (a backfill after changing thresholds).
    reprocess: bool = False
    # Lowest-scoring images listed in a drift alert, for the on-call engineer to look at.
    lowest_k: int = 5
    device: str = "auto"
    workers: int = 1
    # The network's precision: the approved thresholds must have been calibrated in the same one.
    precision: str = "fp32"
    # "device": JPEGs decoded on the GPU (needs torchvision); the approved thresholds must have been calibrated so.
    decoder: str = "host"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")


def monitor_config(
    source: str,
    out: str,
    *,
    window: str = "1h",
    model: str = "efficientnet-lite0",
    since: str | None = None,
    until: str | None = None,
    webhooks: Sequence[str] = (),
    slack_webhooks: Sequence[str] = (),
    reprocess: bool = False,
    device: str = "auto",
    workers: int = 1,
    precision: str = "fp32",
    decoder: str = "host",
) -> MonitorConfig:
    """A MonitorConfig from the text an operator writes (CLI flags, deployment parameters).

    Raises:
        ValueError: a window or time that does not parse, naming it.
    """
    return MonitorConfig(
        source=source,
        out=out,
        window=parse_window(window),
        model=model,
        since=parse_event_time(since) if since else None,
        until=parse_event_time(until) if until else None,
        webhooks=tuple(webhooks),
        slack_webhooks=tuple(slack_webhooks),
        reprocess=reprocess,
        device=device,
        workers=workers,
        precision=precision,
        decoder=decoder,
    )


@dataclass
class MonitorReport:
    """What one run did, window by window."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    alerts_queued: int = 0
    alerts_delivered: int = 0
    alerts_pending: int = 0
    mlflow_run_id: str = ""


class Watermark:
    """Processed windows and the fingerprint of the images each had, kept with the outputs."""

    def __init__(self, out: str) -> None:
        self.path = Path(out) / "_state" / "watermark.json"
        self.windows: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def is_current(self, window_start: dt.datetime, fingerprint: str) -> bool:
        return self.windows.get(window_label(window_start), {}).get("fingerprint") == fingerprint

    def segments(self, window_start: dt.datetime) -> set[str]:
        """Segments that sent images in a processed window (empty when it was not processed)."""
        return set(self.windows.get(window_label(window_start), {}).get("segments", []))

    def mark(self, window_start: dt.datetime, fingerprint: str, status: str, segments: set[str]) -> None:
        self.windows[window_label(window_start)] = {
            "fingerprint": fingerprint,
            "status": status,
            "segments": sorted(segments),
            "processed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(".watermark.json.tmp")
        temporary.write_text(json.dumps(self.windows, indent=1, sort_keys=True))
        temporary.replace(self.path)


def floor_to_window(moment: dt.datetime, window: dt.timedelta) -> dt.datetime:
    size = window.total_seconds()
    return dt.datetime.fromtimestamp(math.floor(moment.timestamp() / size) * size, dt.UTC)


def inventory(source: str, window: dt.timedelta) -> dict[dt.datetime, list[ImageRef]]:
    """SOURCE's images by window start (manifest rows that cannot be placed are left to the pipeline)."""
    by_window: dict[dt.datetime, list[ImageRef]] = defaultdict(list)
    for entry in list_source(source):
        if isinstance(entry, ImageRef):
            by_window[floor_to_window(entry.event_time, window)].append(entry)
    return dict(by_window)


def fingerprint(refs: Sequence[ImageRef]) -> str:
    listing = sorted(f"{ref.uri}|{ref.event_time.isoformat()}|{ref.segment}" for ref in refs)
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def plan_windows(
    config: MonitorConfig, images: Mapping[dt.datetime, list[ImageRef]], watermark: Watermark, now: dt.datetime
) -> list[dt.datetime]:
    """Complete windows in [since, until) that are new, changed (late images), or to be re-processed."""
    last_complete = floor_to_window(now, config.window)  # the window that contains now is still filling
    until = min(floor_to_window(config.until, config.window), last_complete) if config.until else last_complete
    first_seen = min(images, default=None)
    known = [parse_window_label(label) for label in watermark.windows]
    start = floor_to_window(config.since, config.window) if config.since else min([*known, *(
        [first_seen] if first_seen else [])], default=None)  # fmt: skip
    if start is None:
        return []
    planned = []
    moment = start
    while moment < until:
        current = watermark.is_current(moment, fingerprint(images.get(moment, [])))
        if config.reprocess or not current:
            planned.append(moment)
        moment += config.window
    return planned


class Monitor:
    """One monitoring run in steps, so that an orchestrator can retry the steps that can fail transiently
    (MLflow, the object store, webhooks) and none of those that cannot (configuration)."""

    def __init__(
        self, config: MonitorConfig, *, now: dt.datetime | None = None, links: Mapping[str, str] | None = None
    ):
        """Validate the configuration; every error here is final.

        Raises:
            AlertConfigError, SourceError, ModelSpecError: naming what to fix.
        """
        self.config = config
        self.targets = targets_from(config.webhooks, config.slack_webhooks)
        check_source(config.source)
        self.loaded = load_model(config.model)
        self.now = now or dt.datetime.now(dt.UTC)
        self.links = dict(links or {})
        self.report = MonitorReport()
        self.outbox = Outbox(Path(config.out) / "alerts")

    def load_thresholds(self, registry: ThresholdRegistry) -> None:
        """The production calibration for these weights.

        Raises:
            NoApprovedThresholdError, ThresholdModelMismatchError: nothing approved for these weights, precision
                and decoder.
        """
        self.registry = registry
        self.calibration, self.version = registry.load_production(
            self.loaded.name, self.loaded.model_id, precision=self.config.precision, decoder=self.config.decoder
        )

    def plan(self) -> list[dt.datetime]:
        """The windows to process, and an MLflow run for them when there are any."""
        self.watermark = Watermark(self.config.out)
        self.images = inventory(self.config.source, self.config.window)
        planned = plan_windows(self.config, self.images, self.watermark, self.now)
        if planned:
            self.gates = Gates()
            self.policy = AlertPolicy(Path(self.config.out) / "alerts", reminder_every=self.config.reminder_every)
            name = Path(self.config.source.rstrip("/")).name
            self.report.mlflow_run_id = self.registry.start_monitoring_run(
                f"monitor {name} {window_label(planned[0])}..{window_label(planned[-1])}",
                {"source": redact(self.config.source), "model_id": self.loaded.model_id,
                 "threshold_version": self.version.version, "window": str(self.config.window),
                 "windows": len(planned), "precision": self.config.precision, "decoder": self.config.decoder},
            )  # fmt: skip
            self.links["mlflow_run_id"] = self.report.mlflow_run_id
        return planned

    def process(self, window_start: dt.datetime) -> dict[str, Any]:
        """Gate, score, decide, record, log and queue alerts for one window; safe to retry."""
        refs = self.images.get(window_start, [])
        record, alerts = _process_window(
            self.config, window_start, refs, self.calibration, self.version.version, self.gates, self.policy,
            self.links, self.loaded,
        )  # fmt: skip
        # A camera that stops while the others go on: a segment of the previous window that sent nothing now.
        silent = self.watermark.segments(window_start - self.config.window) - {ref.segment for ref in refs}
        if refs:
            for segment in sorted(silent):
                alerts.append(
                    Alert("no_data", window_start, window_start + self.config.window, segment,
                          self.calibration.model_id, self.version.version,
                          summary=f"segment {segment!r} sent no images in {window_label(window_start)} "
                                  "(it did in the window before)", links=dict(self.links))
                )  # fmt: skip
        decision = record.pop("_decision", None)
        if decision is not None:
            self.registry.log_window(self.report.mlflow_run_id, window_start, self.config.window, decision)
        self.report.alerts_queued += sum(self.outbox.add(alert) for alert in alerts)
        self.policy.save()
        self.watermark.mark(window_start, fingerprint(refs), record["status"], {ref.segment for ref in refs})
        self.report.windows.append({"window_start": window_start, **record})
        return record

    def finish(self, *, failed: bool) -> None:
        if self.report.mlflow_run_id:
            self.registry.end_run(self.report.mlflow_run_id, failed=failed)

    def deliver(self) -> tuple[int, int]:
        """Post every pending alert, this run's and any an earlier outage left behind."""
        self.report.alerts_delivered, self.report.alerts_pending = deliver_pending(self.outbox, self.targets)
        return self.report.alerts_delivered, self.report.alerts_pending


def run_monitor(
    config: MonitorConfig,
    *,
    registry: ThresholdRegistry,
    now: dt.datetime | None = None,
    links: Mapping[str, str] | None = None,
) -> MonitorReport:
    """Process every complete window not yet processed, then deliver pending alerts.

    Raises:
        AlertConfigError, SourceError, ModelSpecError: bad configuration, before any window is touched.
        NoApprovedThresholdError, ThresholdModelMismatchError: nothing approved for these weights, precision and
            decoder.
    """
    monitor = Monitor(config, now=now, links=links)
    monitor.load_thresholds(registry)
    failed = True
    try:
        for window_start in monitor.plan():
            monitor.process(window_start)
        failed = False
    finally:
        monitor.finish(failed=failed)
    monitor.deliver()
    return monitor.report


def _process_window(
    config: MonitorConfig,
    window_start: dt.datetime,
    refs: Sequence[ImageRef],
    calibration: Calibration,
    threshold_version: str,
    gates: Gates,
    policy: AlertPolicy,
    links: Mapping[str, str],
    loaded: LoadedModel,
) -> tuple[dict[str, Any], list[Alert]]:
    window_end = window_start + config.window
    common = {"model_id": calibration.model_id, "threshold_version": threshold_version, "links": dict(links)}
    if not refs:
        log.warning("window %s has no images", window_label(window_start))
        summary = f"no images arrived in {window_label(window_start)}: is the feed down?"
        alert = Alert("no_data", window_start, window_end, "", summary=summary, **common)
        record = _record(window_end, "no_data", None, 0, 0, None, calibration, threshold_version, links)
        _write_decision(config, window_start, record)
        return record, [alert]

    alerts = []
    before = gates.before_scoring(image_metadata(refs), window_start, window_end)
    scoring = run_scoring(
        ScoringConfig(source=config.source, out=config.out, window=config.window, model=config.model,
                      since=window_start, until=window_end, device=config.device, workers=config.workers,
                      precision=config.precision, decoder=config.decoder),
        loaded=loaded,
    )  # fmt: skip
    scores = read_window(config.out, "scores", window_start, source=config.source)
    windows = read_window(config.out, "windows", window_start, source=config.source)
    after = gates.after_scoring(
        scores.to_pandas() if scores.num_rows else _empty_scores(), windows.to_pandas(), calibration.config.min_window
    )
    quality = [gate for gate in (before, after) if not gate.success]
    if quality:
        alerts.append(
            Alert("data_quality", window_start, window_end, "", summary="; ".join(g.summary() for g in quality),
                  decision={"failed_expectations": [f for g in quality for f in g.failed]}, **common)
        )  # fmt: skip
    decision = calibration.decide(_by_segment(scores)) if scores.num_rows else None
    status = decision.status if decision else "insufficient_data"
    if decision is not None:
        fired_segments = {name.split("/")[0] for name in decision.fired}
        for segment in decision.n:
            if segment in decision.insufficient_segments:
                continue
            label = segment or "-"
            kind, reminder = policy.on_decision(segment, window_start, label in fired_segments)
            if kind is None:
                continue
            alerts.append(
                Alert(kind, window_start, window_end, segment, reminder=reminder,
                      summary=_summary(kind, segment, decision, window_start),
                      decision=decision.to_dict(), lowest_scoring=_lowest(scores, segment, decision, config.lowest_k),
                      **common)
            )  # fmt: skip
    record = _record(
        window_end, status, decision, scores.num_rows, scoring.rejected.total(), quality, calibration,
        threshold_version, links,
    )  # fmt: skip
    _write_decision(config, window_start, record)
    record["_decision"] = decision or calibration.decide({"": {}})  # logged as "not tested" when nothing scored
    return record, alerts


def _empty_scores():
    import pandas as pd

    return pd.DataFrame(
        {name: pd.Series(dtype=float) for name in decision_scores()} | {"image_id": pd.Series(dtype=str)}
    )


def _by_segment(scores: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    segments = np.asarray(scores.column("segment").to_pylist(), dtype=object)
    return {
        segment: {name: scores.column(name).to_numpy()[segments == segment] for name in decision_scores()}
        for segment in sorted(set(segments))
    }


def _summary(kind: str, segment: str, decision: WindowDecision, window_start: dt.datetime) -> str:
    where = f"segment {segment!r}" if segment else "the feed"
    if kind == "recovered":
        return f"{where} is back to the reference distribution in window {window_label(window_start)}"
    fired = [name for name in decision.fired if name.split("/")[0] == (segment or "-")]
    return f"drift in {where}, window {window_label(window_start)}: {', '.join(fired)}"


def lowest_scoring(rows: Sequence[Mapping[str, Any]], fired: Sequence[str], k: int) -> tuple[str, list[Mapping]]:
    """The k rows lowest on the first score that fired (``segment/score/test`` names), MSP when none did."""
    score = fired[0].split("/")[1] if fired else "msp"
    return score, sorted(rows, key=lambda row: row[score])[:k]


def _lowest(scores: pa.Table, segment: str, decision: WindowDecision, k: int) -> list[str]:
    fired = [name for name in decision.fired if name.split("/")[0] == (segment or "-")]
    rows = [row for row in scores.to_pylist() if row["segment"] == segment]
    return [row["uri"] for row in lowest_scoring(rows, fired, k)[1]]


def _record(
    window_end: dt.datetime,
    status: str,
    decision: WindowDecision | None,
    scored: int,
    rejected: int,
    quality: list[GateResult] | None,
    calibration: Calibration,
    threshold_version: str,
    links: Mapping[str, str],
) -> dict[str, Any]:
    return {
        "window_end": window_end,
        "status": status,
        "is_drift": bool(decision and decision.is_drift),
        "n": scored,
        "n_rejected": rejected,
        "fired": decision.fired if decision else [],
        "data_quality_passed": not quality,
        "data_quality_failures": json.dumps([f for gate in quality or [] for f in gate.failed]),
        "decision": json.dumps(decision.to_dict() if decision else {}, default=float),
        "model_id": calibration.model_id,
        "threshold_version": threshold_version,
        "mlflow_run_id": links.get("mlflow_run_id", ""),
        "decided_at": dt.datetime.now(dt.UTC),
    }


def _write_decision(config: MonitorConfig, window_start: dt.datetime, record: Mapping[str, Any]) -> None:
    writer = WritePartition(config.out, "decisions", DECISIONS_SCHEMA, config.source)
    row = {key: value for key, value in record.items() if not key.startswith("_")}
    list(writer.process((window_label(window_start), [row])))
