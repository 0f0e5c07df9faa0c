"""The monitoring job in steps: load thresholds, plan (taking OUT's lease), process each window (delivering what it
pages at once), finish, deliver what is left, release.

Prefect's flows (flows/prefect_flows.py) are a thin layer over these steps; :func:`run_monitor` runs them in
order, for the CLI and the tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from flows.alerts import Outbox, deliver_pending, targets_from
from flows.monitor.config import MonitorConfig
from flows.monitor.decisions import decision_row, write_decision
from flows.monitor.lease import Lease
from flows.monitor.paging import AlertContext, AlertPolicy, alerts_for
from flows.monitor.planning import Watermark, fingerprint, inventory, plan_windows, scoring_runs
from flows.monitor.sequential import SequentialCharts
from flows.monitor.window import WindowOutcome, process_window, score_windows
from flows.quality import Gates
from flows.reference_check import check_on_start
from flows.registry import ThresholdRegistry
from pipelines.redaction import redact, redact_logs
from pipelines.sources import open_source
from pipelines.store import OutputStore
from pipelines.times import window_label
from scoring import load_model
from scoring.reference_check import ReferenceCheck

log = logging.getLogger("gradwatch.monitor")


@dataclass
class MonitorReport:
    """What one run did, window by window."""

    windows: list[WindowOutcome] = field(default_factory=list)
    alerts_queued: int = 0
    alerts_delivered: int = 0
    alerts_pending: int = 0
    mlflow_run_id: str = ""
    # Whether the thresholds' reference represents this feed, checked once per threshold version (None: not this run).
    reference_check: ReferenceCheck | None = None


class Monitor:
    """One monitoring run in steps, so that an orchestrator can retry the steps that can fail transiently
    (MLflow, the object store, webhooks) and none of those that cannot (configuration)."""

    def __init__(
        self, config: MonitorConfig, *, now: dt.datetime | None = None, links: Mapping[str, str] | None = None
    ) -> None:
        """Validate the configuration; every error here is final.

        Raises:
            AlertConfigError, SourceError, RunnerError, ModelSpecError: naming what to fix.
        """
        redact_logs()
        self.config = config
        self.targets = targets_from(config.webhooks, config.slack_webhooks)
        self.source = open_source(config.source)
        self.source.check()
        config.pipeline.check()
        self.loaded = load_model(config.scoring.model)
        self.now = now or dt.datetime.now(dt.UTC)
        self.links = dict(links or {})
        self.report = MonitorReport()
        self.store = OutputStore(config.out)
        self.outbox = Outbox(self.store)
        self.lease = Lease(self.store, ttl=config.lease_ttl)

    def load_thresholds(self, registry: ThresholdRegistry) -> None:
        """The production calibration for these weights.

        Raises:
            NoApprovedThresholdError, ThresholdModelMismatchError: nothing approved for these weights and scoring
                settings.
        """
        self.registry = registry
        self.calibration, self.version = registry.load_production(
            self.loaded.name, self.loaded.model_id, scoring=self.config.scoring
        )

    def plan(self) -> list[dt.datetime]:
        """Take OUT's lease, then the windows to process, and an MLflow run for them when there are any.

        Raises:
            MonitorBusyError: another monitor holds OUT (after ``config.lease_wait``).
        """
        killed = self.lease.acquire(wait=self.config.lease_wait)
        if killed and killed.get("mlflow_run_id"):
            self.registry.fail_if_running(killed["mlflow_run_id"])
        self.watermark = Watermark(self.store)
        self.watermark.forget_before(self.config.plausible.earliest)
        # A reference that is not a sample of this feed pages healthy windows: said before they page, when OUT
        # already holds a day of scored windows (else at the end of the run, from the windows it scored).
        self.report.reference_check = self._check_reference()
        cusum = self.calibration.sequential
        self.charts = SequentialCharts(self.store, cusum, self.version.version) if cusum else None
        self.images = inventory(self.source, self.config.window, self.config.plausible)
        planned = plan_windows(self.config, self.images, self.watermark, self.now)
        self.scoring_runs = scoring_runs(planned, self.images, self.config)
        self.scored: set[dt.datetime] = set()
        if planned:
            self.gates = Gates()
            self.report.mlflow_run_id = self.registry.start_monitoring_run(
                f"monitor {self.source.name} {window_label(planned[0])}..{window_label(planned[-1])}",
                {
                    "source": redact(self.config.source),
                    "model_id": self.loaded.model_id,
                    "threshold_version": self.version.version,
                    "window": str(self.config.window),
                    "windows": len(planned),
                    **self.config.scoring.recorded(),
                    **self.config.pipeline.described(),
                },
            )
            self.links["mlflow_run_id"] = self.report.mlflow_run_id
            self.lease.record_run(self.report.mlflow_run_id)
        return planned

    def process(self, window_start: dt.datetime) -> WindowOutcome:
        """Gate, score, decide, record, log, queue and deliver alerts for one window; safe to retry.

        Raises:
            LeaseLostError: another run took OUT over; this one writes and pages nothing more.
        """
        self.lease.check()
        refs = self.images.get(window_start, [])
        if refs and window_start not in self.scored:
            # The rest of this window's run: a retry of a window whose run failed scores from that window on.
            run = next(run for run in self.scoring_runs if window_start in run)
            rest = run[run.index(window_start) :]
            score_windows(rest, config=self.config, calibration=self.calibration, loaded=self.loaded)
            self.scored.update(rest)
        outcome = process_window(
            window_start,
            refs,
            config=self.config,
            calibration=self.calibration,
            gates=self.gates,
            source=self.source,
        )
        if self.charts is not None and outcome.decision is not None:
            # Across windows: what no window alone shows, a CUSUM per test may (the charts saved by window).
            decision = self.calibration.with_sequential(
                outcome.decision, self.charts.update(window_start, outcome.decision)
            )
            status = decision.status if outcome.status in ("ok", "drift") else outcome.status
            outcome = dataclasses.replace(outcome, decision=decision, status=status)
        context = AlertContext(
            self.calibration.model_id, self.version.version, self.calibration, self.links, self.config.images_per_alert
        )
        previous = self.watermark.segments(window_start - self.config.window)
        # As the last window left it: a retry after a failure below must page what the failed attempt would have.
        policy = AlertPolicy(self.store, reminder_every=self.config.reminder_every, now=self.now)
        alerts = alerts_for(outcome, previous_segments=previous, policy=policy, context=context)
        row = decision_row(
            outcome,
            model_id=self.calibration.model_id,
            threshold_version=self.version.version,
            mlflow_run_id=self.report.mlflow_run_id,
        )
        self.lease.check()  # scoring may have outlasted the lease: nothing is written for a run that lost it
        write_decision(self.store, outcome, row, part=self.source.key, replaces=self.source.former_keys)
        if outcome.status != "no_data":
            # A window nothing of which could be scored is logged as not tested.
            decision = outcome.decision or self.calibration.decide({"": {}})
            self.registry.log_window(self.report.mlflow_run_id, window_start, self.config.window, decision)
        self.report.alerts_queued += sum(self.outbox.add(alert) for alert in alerts)
        policy.save()
        self.watermark.mark(window_start, fingerprint(refs), outcome.status, set(outcome.segments))
        self.report.windows.append(outcome)
        # Paged now, not at the end of the run: a run killed later has delivered what it decided.
        self.deliver()
        return outcome

    def _check_reference(self) -> ReferenceCheck | None:
        """The reference check, once per threshold version: advice to the ML owner, so a failure of its own is a
        warning naming the command that runs it again, never a failed monitoring run that pages nothing."""
        try:
            return check_on_start(self.store, self.registry, self.calibration, self.version, self.now)
        except Exception as error:
            log.warning(
                "the reference check of threshold version %s failed (%s); run it with 'gradwatch thresholds check "
                "%s --against %s'", self.version.version, redact(str(error)), self.version.version,
                redact(self.config.out),
            )  # fmt: skip
            return None

    def finish(self, *, failed: bool) -> None:
        if not failed and self.report.reference_check is None and self.report.windows:
            self.report.reference_check = self._check_reference()
        if self.report.mlflow_run_id:
            self.registry.end_run(self.report.mlflow_run_id, failed=failed)

    def deliver(self) -> tuple[int, int]:
        """Post every pending alert, this run's and any an earlier outage left behind.

        Returns:
            (alerts delivered by this run so far, alerts still pending).
        """
        if not self.lease.held:  # the run that holds OUT delivers: two delivering at once pages twice
            return self.report.alerts_delivered, self.report.alerts_pending
        delivered, self.report.alerts_pending = deliver_pending(self.outbox, self.targets)
        self.report.alerts_delivered += delivered
        return self.report.alerts_delivered, self.report.alerts_pending

    def release(self) -> None:
        """Give OUT back, for the next run."""
        self.lease.release()


def run_monitor(
    config: MonitorConfig,
    *,
    registry: ThresholdRegistry,
    now: dt.datetime | None = None,
    links: Mapping[str, str] | None = None,
    on_planned: Callable[[Sequence[dt.datetime]], None] | None = None,
    on_window: Callable[[WindowOutcome], None] | None = None,
) -> MonitorReport:
    """Process every complete window not yet processed, then deliver pending alerts.

    ``on_planned`` is told the windows the run will process and ``on_window`` each outcome as it is decided, for
    progress: a run over a day of windows takes minutes.

    Raises:
        AlertConfigError, SourceError, RunnerError, ModelSpecError: bad configuration, before any window is touched.
        NoApprovedThresholdError, ThresholdModelMismatchError: nothing approved for these weights and scoring
            settings.
    """
    monitor = Monitor(config, now=now, links=links)
    monitor.load_thresholds(registry)
    failed = True
    try:
        planned = monitor.plan()
        if on_planned is not None:
            on_planned(planned)
        for window_start in planned:
            outcome = monitor.process(window_start)
            if on_window is not None:
                on_window(outcome)
        failed = False
    finally:
        try:
            monitor.finish(failed=failed)
            monitor.deliver()
        finally:
            monitor.release()
    return monitor.report
