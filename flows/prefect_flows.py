"""Prefect flows: a thin layer over flows.monitor and flows.calibrate.

Tasks retry where the cause can be transient (MLflow down, the object store, webhooks) and never where it cannot:
a configuration error (no approved thresholds, a missing SOURCE, a bad option) fails the flow run at once.
Parameters are plain values an operator sets on a deployment, the scoring and pipeline settings as one object
each (``scoring: {model: ..., precision: fp16}``, ``pipeline: {runner: FlinkRunner, beam_options: [...]}``),
validated as the command line's are; secrets (GRADWATCH_WEBHOOK_SECRET, MLflow and object-store credentials) come
from the worker's environment or Prefect Secret blocks, never from parameters.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.calibrate import calibrate_from_out, calibrate_reference
from flows.monitor import Monitor, WindowOutcome, monitor_config
from flows.registry import RegistryUnavailableError, ThresholdRegistry
from pipelines.settings import PipelineSettings
from pipelines.times import parse_event_time
from scoring import GradwatchError, ScoringSettings
from scoring.calibration import CalibrationConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/prefect_flows.py:monitor"


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what can be transient, but no gradwatch error other than MLflow not answering: those are configuration
    (retrying NoApprovedThresholdError three times over six minutes found the same empty store), a lease held by
    another run (it exits, as the command line's does: the next scheduled run comes anyway) or one lost to another
    run (which has the windows now)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, RegistryUnavailableError) or not isinstance(error, GradwatchError)


TRANSIENT = {
    "retries": 3,
    "retry_delay_seconds": [10, 60, 300],
    "cache_policy": NO_CACHE,
    "retry_condition_fn": _retry_if_transient,
}


@task(name="load approved thresholds", **TRANSIENT)
def load_thresholds(monitor: Monitor, mlflow_uri: str | None) -> str:
    monitor.load_thresholds(ThresholdRegistry(mlflow_uri))
    return monitor.version.version


@task(name="plan windows", **TRANSIENT)
def plan_windows(monitor: Monitor) -> list[dt.datetime]:
    return monitor.plan()


@task(name="process window", **TRANSIENT)
def process_window(monitor: Monitor, window_start: dt.datetime) -> WindowOutcome:
    outcome = monitor.process(window_start)
    get_run_logger().info(
        "window %s: %s, n=%s, rejected=%s, fired=%s", window_start.isoformat(), outcome.status, outcome.scored,
        outcome.rejected, [test.label for test in outcome.fired],
    )  # fmt: skip
    return outcome


@task(name="deliver alerts", **TRANSIENT)
def deliver_alerts(monitor: Monitor) -> tuple[int, int]:
    return monitor.deliver()


@flow(name="gradwatch-monitor")
def monitor(
    source: str,
    out: str,
    window: str = "1h",
    since: str | None = None,
    until: str | None = None,
    webhooks: list[str] | None = None,
    slack_webhooks: list[str] | None = None,
    reprocess: bool = False,
    scoring: ScoringSettings = ScoringSettings(),
    pipeline: PipelineSettings = PipelineSettings(),
    earliest_event_time: str | None = None,
    mlflow_uri: str | None = None,
) -> dict[str, Any]:
    """Process every complete window of SOURCE not yet processed, then deliver pending alerts.

    ``mlflow_uri`` is the tracking store the thresholds were approved in; None reads GRADWATCH_MLFLOW_URI, then
    MLFLOW_TRACKING_URI, in the worker's environment (credentials belong there, never in a parameter).
    """
    config = monitor_config(
        source, out, window=window, since=since, until=until, webhooks=webhooks or (),
        slack_webhooks=slack_webhooks or (), reprocess=reprocess, scoring=scoring, pipeline=pipeline,
        earliest_event_time=earliest_event_time,
    )  # fmt: skip
    job = Monitor(config, links={"prefect_flow_run": str(flow_run.id or ""), "prefect_ui": flow_run.ui_url or ""})
    threshold_version = load_thresholds(job, mlflow_uri)
    try:
        windows = plan_windows(job)
        failed = True
        try:
            outcomes = [process_window(job, window_start) for window_start in windows]
            failed = False
        finally:
            job.finish(failed=failed)
        delivered, pending = deliver_alerts(job)
    finally:
        job.release()
    return {
        "threshold_version": threshold_version,
        "windows": len(outcomes),
        "drift": sum(outcome.is_drift for outcome in outcomes),
        "alerts_delivered": delivered,
        "alerts_pending": pending,
    }


@flow(name="gradwatch-backfill")
def backfill(
    source: str,
    out: str,
    start: str,
    end: str,
    window: str = "1h",
    reprocess: bool = True,
    webhooks: list[str] | None = None,
    slack_webhooks: list[str] | None = None,
    scoring: ScoringSettings = ScoringSettings(),
    pipeline: PipelineSettings = PipelineSettings(),
    earliest_event_time: str | None = None,
    mlflow_uri: str | None = None,
) -> dict[str, Any]:
    """History: every window in [start, end), re-processed by default; alerts are queued and delivered to the
    targets given, as the hourly monitor's are (without targets they stay in the outbox for the next run that has
    them)."""
    return monitor(
        source=source, out=out, window=window, since=start, until=end, reprocess=reprocess, webhooks=webhooks,
        slack_webhooks=slack_webhooks, scoring=scoring, pipeline=pipeline, earliest_event_time=earliest_event_time,
        mlflow_uri=mlflow_uri,
    )  # fmt: skip


@flow(name="gradwatch-calibrate")
def calibrate(
    reference: str | None = None,
    score: str | None = None,
    tpr: float = 0.95,
    alpha: float = 0.01,
    min_window: int = 50,
    validation_ood: list[str] | None = None,
    scoring: ScoringSettings = ScoringSettings(),
    pipeline: PipelineSettings = PipelineSettings(),
    from_out: str | None = None,
    since: str | None = None,
    until: str | None = None,
    labels: str | None = None,
    mlflow_uri: str | None = None,
) -> dict[str, str]:
    """Calibrate on healthy reference images, or on the windows of ``from_out`` in [since, until) without scoring
    them again, and propose the thresholds for review in MLflow (``mlflow_uri``, as the monitor reads it)."""
    config = CalibrationConfig(tpr=tpr, alpha=alpha, min_window=min_window)
    if (reference is None) == (from_out is None):
        raise GradwatchError("pass reference (healthy images) or from_out with since and until, exactly one of them")
    if from_out is not None:
        if not (since and until):
            raise GradwatchError("from_out needs since and until: the period of healthy production windows")
        version, calibration = calibrate_from_out(
            from_out, since=parse_event_time(since), until=parse_event_time(until),
            registry=ThresholdRegistry(mlflow_uri), scoring=scoring, score=score, config=config, labels=labels,
        )  # fmt: skip
    else:
        version, calibration = calibrate_reference(
            reference, registry=ThresholdRegistry(mlflow_uri), scoring=scoring, pipeline=pipeline, score=score,
            config=config, validation_ood=validation_ood or (), labels=labels,
        )  # fmt: skip
    return {"registered_model": version.name, "version": version.version, "model_id": calibration.model_id}


def deploy(
    *,
    name: str,
    parameters: dict[str, Any],
    cron: str = "5 * * * *",
    work_pool: str = "gradwatch",
    source: Path = REPO_ROOT,
) -> str:
    """Create (or update) a scheduled deployment of the monitor on a process work pool; returns its id.

    The cron's default runs a few minutes after each hour, once the hour's window is complete.

    Raises:
        GradwatchError: no Prefect server is configured. Prefect would start a temporary one, register the
            deployment in it and stop it on exit, reporting success for a schedule that never runs.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    if not get_current_settings().api.url:
        raise GradwatchError(
            "deploy needs a running Prefect server, and PREFECT_API_URL is not set (Prefect would register the "
            "deployment in a temporary server that stops when this command exits): start one with `prefect server "
            "start` and `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`, then start a worker with "
            f"`prefect worker start --pool {work_pool}`; or run the schedule in this process with `gradwatch serve`"
        )

    async def ensure_pool() -> None:
        async with get_client() as client:
            try:
                await client.read_work_pool(work_pool)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))

    run_coro_as_sync(ensure_pool())
    loaded = monitor.from_source(source=str(source), entrypoint=ENTRYPOINT)
    return str(
        loaded.deploy(name=name, work_pool_name=work_pool, cron=cron, parameters=parameters, print_next_steps=False)
    )


def serve(*, name: str, parameters: dict[str, Any], cron: str = "5 * * * *") -> None:
    """Run the schedule in this process: for small setups without a worker pool."""
    monitor.serve(name=name, cron=cron, parameters=parameters)
