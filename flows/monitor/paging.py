"""What a window's outcome pages: drift once per episode and segment, reminders, recovery, data quality, no data.

The episode state of every segment is kept with the outputs (``OUT/alerts/state.json``), so the policy holds
across runs; alerts go to the outbox, which never queues the same alert twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flows.alerts import Alert
from flows.monitor.window import WindowOutcome
from pipelines.store import OutputStore
from pipelines.times import window_label
from scoring import registered_scores
from scoring.calibration import PREDICTION, Calibration
from scoring.drift import FiredTest, WindowDecision
from scoring.features import FEATURES

log = logging.getLogger("gradwatch.monitor")

# The score whose most extreme images an alert shows when no test fired (recovery): MSP reads as a confidence.
_FALLBACK_SCORE = "msp"


@dataclass
class EpisodeState:
    """Per segment: whether a drift episode is open, when it paged last, and how many reminders went out."""

    drifting_since: str | None = None
    last_paged: str | None = None
    reminders: int = 0


class AlertPolicy:
    """Cooldown: a drift pages once, then reminds every ``reminder_every``, and ``recovered`` ends it."""

    def __init__(self, store: OutputStore, *, reminder_every: dt.timedelta) -> None:
        self.store = store
        self.reminder_every = reminder_every
        self.states = {
            segment: EpisodeState(**state) for segment, state in (store.load_state("alert_policy") or {}).items()
        }

    def on_decision(self, segment: str, window_start: dt.datetime, is_drift: bool) -> tuple[str | None, int]:
        """What to send for this window: ``("drift", reminder)``, ``("recovered", 0)`` or ``(None, 0)``."""
        state = self.states.setdefault(segment, EpisodeState())
        if is_drift:
            if state.drifting_since is None:
                state.drifting_since = state.last_paged = window_start.isoformat()
                state.reminders = 0
                return "drift", 0
            if window_start - dt.datetime.fromisoformat(state.last_paged) >= self.reminder_every:
                state.last_paged = window_start.isoformat()
                state.reminders += 1
                return "drift", state.reminders
            return None, 0
        if state.drifting_since is not None and window_start > dt.datetime.fromisoformat(state.drifting_since):
            self.states[segment] = EpisodeState()
            return "recovered", 0
        return None, 0

    def save(self) -> None:
        self.store.save_state("alert_policy", {segment: asdict(state) for segment, state in self.states.items()})


@dataclass(frozen=True)
class AlertContext:
    """What every alert of a run carries besides its window, and the calibration its decisions were made with."""

    model_id: str
    threshold_version: str
    calibration: Calibration
    links: dict[str, str] = field(default_factory=dict)
    images_per_alert: int = 5


def alerts_for(
    outcome: WindowOutcome, *, previous_segments: set[str], policy: AlertPolicy, context: AlertContext
) -> list[Alert]:
    """Every alert one window raises.

    Args:
        outcome: the window, processed.
        previous_segments: the segments that sent images in the window before, for cameras that went silent.
        policy: the episode state; updated here, saved by the caller.
        context: model, thresholds and links every alert carries.
    """
    start, end = outcome.window_start, outcome.window_end
    common = {
        "model_id": context.model_id,
        "threshold_version": context.threshold_version,
        "links": dict(context.links),
    }
    if outcome.status == "no_data":
        log.warning("window %s has no images", window_label(start))
        summary = f"no images arrived in {window_label(start)}: is the feed down?"
        return [Alert("no_data", start, end, "", summary=summary, **common)]
    alerts = []
    if outcome.failed_gates:
        summary = "; ".join(gate.summary() for gate in outcome.failed_gates)
        failed = {"failed_expectations": outcome.failed_expectations}
        alerts.append(Alert("data_quality", start, end, "", summary=summary, decision=failed, **common))
    if outcome.decision is not None:
        alerts += _episode_alerts(outcome, outcome.decision, policy, context, common)
    # A camera that stops while the others go on: a segment of the window before that sent nothing now.
    for segment in sorted(previous_segments - outcome.segments):
        summary = f"segment {segment!r} sent no images in {window_label(start)} (it did in the window before)"
        alerts.append(Alert("no_data", start, end, segment, summary=summary, **common))
    return alerts


def _episode_alerts(
    outcome: WindowOutcome,
    decision: WindowDecision,
    policy: AlertPolicy,
    context: AlertContext,
    common: Mapping[str, Any],
) -> list[Alert]:
    """Per tested segment, the drift page, reminder or recovery the policy says this window sends."""
    alerts = []
    for segment in decision.n:
        if segment in decision.insufficient_segments:
            continue
        fired = decision.fired_in(segment)
        kind, reminder = policy.on_decision(segment, outcome.window_start, bool(fired))
        if kind is None:
            continue
        rows = [row for row in outcome.scores.to_pylist() if row["segment"] == segment]
        _, extreme = most_out_of_distribution(rows, fired, context.images_per_alert, context.calibration, segment)
        alerts.append(
            Alert(
                kind,
                outcome.window_start,
                outcome.window_end,
                segment,
                summary=_summary(kind, segment, fired, outcome.window_start),
                decision=decision.to_dict(),
                most_out_of_distribution=[row["uri"] for row in extreme],
                what_moved=decision.what_moved(segment),
                reminder=reminder,
                **common,
            )
        )
    return alerts


def most_out_of_distribution(
    rows: Sequence[Mapping[str, Any]],
    fired: Sequence[FiredTest],
    k: int,
    calibration: Calibration | None = None,
    segment: str = "",
) -> tuple[str, list[Mapping[str, Any]]]:
    """The k rows furthest out of distribution on the first value with one number per image that fired (MSP when none
    did: the features and predictions place no single image), and that value.

    Furthest as the calibration's reference reads it (a property: furthest from the reference median); without a
    calibration, by the score's registered direction.
    """
    per_image = [test.score for test in fired if test.score not in (FEATURES, PREDICTION)]
    score = per_image[0] if per_image else _FALLBACK_SCORE
    values = np.asarray([row[score] for row in rows], np.float64)
    if calibration is not None and score in calibration.scores:
        inside = calibration.reference(score, segment).oriented(values)
    else:
        registered = registered_scores().get(score)
        inside = values if registered is None or registered.higher_is_in_distribution else -values
    order = np.argsort(np.where(np.isfinite(inside), inside, np.inf), kind="stable")
    return score, [rows[index] for index in order[:k]]


def _summary(kind: str, segment: str, fired: Sequence[FiredTest], window_start: dt.datetime) -> str:
    where = f"segment {segment!r}" if segment else "the feed"
    if kind == "recovered":
        return f"{where} is back to the reference distribution in window {window_label(window_start)}"
    return f"drift in {where}, window {window_label(window_start)}: {', '.join(test.label for test in fired)}"
