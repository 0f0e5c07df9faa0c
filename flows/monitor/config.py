"""What one monitoring run does, from the text an operator writes on a command line or a deployment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.settings import PipelineSettings
from pipelines.times import PlausibleTimes, parse_event_time, parse_plausible, parse_window
from scoring import ScoringSettings


@dataclass(frozen=True)
class MonitorConfig:
    """One monitoring run over SOURCE. Defaults suit an hourly scheduled deployment."""

    source: str
    out: str
    window: dt.timedelta = dt.timedelta(hours=1)
    since: dt.datetime | None = None
    # None: up to the last complete window before now.
    until: dt.datetime | None = None
    webhooks: tuple[str, ...] = ()
    slack_webhooks: tuple[str, ...] = ()
    # A drift that lasts pages once, then reminds every this long, then sends "recovered".
    reminder_every: dt.timedelta = dt.timedelta(hours=6)
    # Re-process windows already in the watermark (a backfill after changing thresholds).
    reprocess: bool = False
    # Images furthest out of distribution listed in a drift alert, for the on-call engineer to look at.
    images_per_alert: int = 5
    # How images are scored: the approved thresholds must have been calibrated with the same score-defining ones.
    scoring: ScoringSettings = ScoringSettings()
    # Where the scoring pipeline runs.
    pipeline: PipelineSettings = PipelineSettings()
    # Consecutive windows are scored in one pipeline run of up to this many images: a run's fixed cost (Beam's
    # start-up, the model's load on each worker) is seconds, while 5,000 images are a couple of minutes on 2 CPU
    # cores. The bound keeps what the local runner holds between stages, and what a failed run repeats, small.
    images_per_scoring_run: int = 5_000
    # Event times an image can have: images outside are rejected, and no window outside is ever planned.
    plausible: PlausibleTimes = PlausibleTimes()
    # One monitor per OUT: a run killed with kill -9 blocks the next for this long at most (renewed every third).
    lease_ttl: dt.timedelta = dt.timedelta(minutes=5)
    # How long a run waits for another that holds OUT before it exits saying so; 0: exit at once (a schedule's
    # next run comes anyway).
    lease_wait: dt.timedelta = dt.timedelta(0)


def monitor_config(
    source: str,
    out: str,
    *,
    window: str = "1h",
    since: str | dt.datetime | None = None,
    until: str | dt.datetime | None = None,
    webhooks: Sequence[str] = (),
    slack_webhooks: Sequence[str] = (),
    reprocess: bool = False,
    scoring: ScoringSettings = ScoringSettings(),
    pipeline: PipelineSettings = PipelineSettings(),
    earliest_event_time: str | None = None,
) -> MonitorConfig:
    """A MonitorConfig from the text an operator writes (CLI flags, deployment parameters).

    Raises:
        ValueError: a window or time that does not parse, naming it.
    """
    return MonitorConfig(
        source=source,
        out=out,
        window=parse_window(window),
        since=parse_event_time(since) if since else None,
        until=parse_event_time(until) if until else None,
        webhooks=tuple(webhooks),
        slack_webhooks=tuple(slack_webhooks),
        reprocess=reprocess,
        scoring=scoring,
        pipeline=pipeline,
        plausible=parse_plausible(earliest_event_time),
    )
