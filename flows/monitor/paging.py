"""What a window's outcome pages: drift and silence (no data), once per episode, with reminders and recovery; data
quality.

The episode state of every segment is kept with the outputs (``OUT/alerts/state.json``), so the policy holds
across runs; alerts go to the outbox, which never queues the same alert twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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
# The state document's layout since no-data episodes: {"version": 2, "drift": {...}, "no_data": {...}}. Before, it
# was the drift episodes by segment alone, which is still read.
_STATE_VERSION = 2


@dataclass
class EpisodeState:
    """Per segment: whether a drift episode is open, when it paged last, and how many reminders went out."""

    drifting_since: str | None = None
    last_paged: str | None = None
    reminders: int = 0


@dataclass
class SilenceState:
    """A no-data episode of the feed or of a segment: its first silent window, the window that paged last and the
    time that page went out (the paging run's now), and how many reminders went out."""

    silent_since: str
    last_paged: str
    paged_at: str
    reminders: int = 0
    # The feed's: the segments of the last window that had images, each of which must send again once the feed does.
    segments_before: list[str] = field(default_factory=list)


class AlertPolicy:
    """Episodes, so that what lasts pages once, reminds every ``reminder_every`` and ``recovered`` ends it: a drift
    per segment, and a silence (no images) of the whole feed or of one segment.

    Args:
        store: where the episode state is kept between runs.
        reminder_every: how long an episode goes without a reminder.
        now: the run's now, which paces no-data reminders (see :meth:`on_silence`); the clock when not given.
    """

    def __init__(self, store: OutputStore, *, reminder_every: dt.timedelta, now: dt.datetime | None = None) -> None:
        self.store = store
        self.reminder_every = reminder_every
        self.now = now or dt.datetime.now(dt.UTC)
        document = store.load_state("alert_policy") or {}
        if document.get("version") != _STATE_VERSION:
            # As versions before no-data episodes wrote it (segment -> drift episode); a segment named "version"
            # there maps to a drift episode, never to this number.
            document = {"drift": document}
        self.states = {segment: EpisodeState(**state) for segment, state in document["drift"].items()}
        silences = document.get("no_data", {})
        # The feed's silence is None: a segment named "" is a camera of its own, not the whole feed.
        self.silences: dict[str | None, SilenceState] = {
            segment: SilenceState(**state) for segment, state in silences.get("segments", {}).items()
        }
        if silences.get("feed"):
            self.silences[None] = SilenceState(**silences["feed"])

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

    def on_silence(
        self,
        segment: str | None,
        window_start: dt.datetime,
        window_end: dt.datetime,
        segments_before: Iterable[str] = (),
    ) -> int | None:
        """A window in which the feed (``segment`` None) or a segment sent no images: the reminder number to page
        with (0 opens the episode), or None to page nothing.

        A reminder says that the silence goes on now, so it is paced by the runs' clocks, as a pager's repeat
        interval is, not by the windows' times: it is due when ``reminder_every`` has gone by since the episode
        last paged by the run's now, and goes with a window of the run's present (one that ends within
        ``reminder_every``, or a window if that is longer, of now). One run thus pages a silence at most once
        however many windows it covers: a one-off run over a feed that ended long ago, or a catch-up across an
        outage, pages it once instead of every ``reminder_every`` of window time, while a live feed that goes
        dark is reminded of every ``reminder_every`` as the scheduled runs go by. Only a window after the one
        that paged last reminds, so re-processing older windows pages nothing new.
        """
        state = self.silences.get(segment)
        label = window_start.isoformat()
        if state is None:
            self.silences[segment] = SilenceState(label, label, self.now.isoformat(), 0, sorted(segments_before))
            return 0
        due = self.now - dt.datetime.fromisoformat(state.paged_at) >= self.reminder_every
        present = window_end >= self.now - max(self.reminder_every, window_end - window_start)
        if due and present and window_start > dt.datetime.fromisoformat(state.last_paged):
            state.last_paged, state.paged_at = label, self.now.isoformat()
            state.reminders += 1
            return state.reminders
        return None

    def on_images(self, segment: str | None, window_start: dt.datetime) -> SilenceState | None:
        """A window in which the feed (``segment`` None) or a segment sent images: the silence this ends, if any."""
        state = self.silences.get(segment)
        # The window that opened the silence, re-processed with late images, does not end it.
        if state is None or window_start <= dt.datetime.fromisoformat(state.silent_since):
            return None
        del self.silences[segment]
        return state

    def silent_segments(self) -> set[str]:
        """The segments (not the feed) whose silence goes on."""
        return {segment for segment in self.silences if segment is not None}

    def save(self) -> None:
        feed = self.silences.get(None)
        segments = {segment: asdict(self.silences[segment]) for segment in self.silent_segments()}
        self.store.save_state(
            "alert_policy",
            {
                "version": _STATE_VERSION,
                "drift": {segment: asdict(state) for segment, state in self.states.items()},
                "no_data": {"feed": asdict(feed) if feed else None, "segments": segments},
            },
        )


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
        # The feed's silence stands for its segments': theirs neither page nor remind while it lasts.
        reminder = policy.on_silence(None, start, end, previous_segments)
        # Warned of when it pages: a run over a feed that ended would warn of every empty window after it.
        log.log(logging.INFO if reminder is None else logging.WARNING, "window %s has no images", window_label(start))
        return [] if reminder is None else [_silence_alert(outcome, None, policy, reminder, common)]
    alerts = []
    if outcome.failed_gates:
        summary = "; ".join(gate.summary() for gate in outcome.failed_gates)
        failed = {"failed_expectations": outcome.failed_expectations}
        alerts.append(Alert("data_quality", start, end, "", summary=summary, decision=failed, **common))
    # By the alert's segment, as drift's recoveries are: the feed's is "", as an unsegmented feed's drift is.
    ended = {
        segment: state
        for segment in sorted(policy.silent_segments() & outcome.segments)
        if (state := policy.on_images(segment, start)) is not None
    }
    if (feed := policy.on_images(None, start)) is not None:
        ended[""] = feed
        # A camera that was live before the whole feed went dark and has not come back is silent on its own now.
        previous_segments = previous_segments | set(feed.segments_before)
    if outcome.decision is not None:
        for alert in _episode_alerts(outcome, outcome.decision, policy, context, common):
            if alert.kind == "recovered" and alert.segment in ended:
                # One page when a segment is back in both ways: two would share an id and one would be lost.
                silence = ended.pop(alert.segment)
                alert = replace(
                    alert,
                    summary=f"{alert.summary}; {_images_again(alert.segment, start, silence)}",
                    decision={**alert.decision, "recovers": ["drift", "no_data"], "silent_since": silence.silent_since},
                )
            alerts.append(alert)
    for segment, silence in ended.items():
        back = {"recovers": ["no_data"], "silent_since": silence.silent_since}
        summary = _images_again(segment, start, silence)
        alerts.append(Alert("recovered", start, end, segment, summary=summary, decision=back, **common))
    # A camera that stops while the others go on: it sent images in the window before, or has sent none since.
    for segment in sorted((previous_segments | policy.silent_segments()) - outcome.segments):
        reminder = policy.on_silence(segment, start, end)
        if reminder is not None:
            alerts.append(_silence_alert(outcome, segment, policy, reminder, common))
    return alerts


def _silence_alert(
    outcome: WindowOutcome, segment: str | None, policy: AlertPolicy, reminder: int, common: Mapping[str, Any]
) -> Alert:
    """The page (reminder 0) or reminder of the feed's silence (``segment`` None) or a segment's."""
    silence = policy.silences[segment]
    label, since = window_label(outcome.window_start), window_label(dt.datetime.fromisoformat(silence.silent_since))
    if segment is None:
        summary = (
            f"no images arrived in {label}: is the feed down?"
            if reminder == 0
            else f"still no images in {label}: the feed has sent none since {since} (reminder {reminder})"
        )
    else:
        summary = (
            f"segment {segment!r} sent no images in {label} (it did in the window before)"
            if reminder == 0
            else f"segment {segment!r} still sends no images in {label}: none since {since} (reminder {reminder})"
        )
    return Alert(
        "no_data",
        outcome.window_start,
        outcome.window_end,
        segment or "",
        summary=summary,
        decision={"silent_since": silence.silent_since},
        reminder=reminder,
        **common,
    )


def _images_again(segment: str, window_start: dt.datetime, silence: SilenceState) -> str:
    where = f"segment {segment!r}" if segment else "the feed"
    since = window_label(dt.datetime.fromisoformat(silence.silent_since))
    return f"images arrive again in {where} in window {window_label(window_start)}: no data since {since}"


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
        # What a recovery ends, so that a receiver tells it from the end of a silence without reading its summary.
        ends = {"recovers": ["drift"]} if kind == "recovered" else {}
        severity = decision.severity.get(segment) if kind == "drift" else None
        estimate = decision.accuracy.get(segment)
        alerts.append(
            Alert(
                kind,
                outcome.window_start,
                outcome.window_end,
                segment,
                summary=_summary(kind, segment, outcome.window_start, decision, context.calibration),
                decision={**decision.to_dict(), **ends},
                most_out_of_distribution=[row["uri"] for row in extreme],
                what_moved=decision.what_moved(segment),
                reminder=reminder,
                severity=severity.level if severity else "",
                severity_reasons=list(severity.reasons) if severity else [],
                estimated_accuracy=dataclasses.asdict(estimate) if estimate else None,
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


def _summary(
    kind: str,
    segment: str,
    window_start: dt.datetime,
    decision: WindowDecision,
    calibration: Calibration,
) -> str:
    where = f"segment {segment!r}" if segment else "the feed"
    if kind == "recovered":
        return f"{where} is back to the reference distribution in window {window_label(window_start)}"
    severity = decision.severity.get(segment)
    level = f" ({severity.level})" if severity else ""
    return f"drift in {where}, window {window_label(window_start)}{level}: " + drift_sentence(
        decision, segment, calibration
    )


def drift_sentence(decision: WindowDecision, segment: str, calibration: Calibration, *, most: int = 3) -> str:
    """What a person reads first: how far what fired moved, then what it likely costs.

    "38% of images below msp's threshold against 5% expected; sharpness fell 2.1 IQR; estimated accuracy 0.61
    (0.55-0.67) against 0.83". One phrase per family, for its most significant value: a score by its outlier rate
    (what its threshold means), an image property by how far its median moved (its bounds are two-sided), the
    features, the predictions and a CUSUM by their tests' own summaries; the values left out are counted.
    """
    effects = {effect.score: effect for effect in decision.effects if effect.segment == segment}
    fired = sorted(
        (record for record in decision.tests if record.is_drift and record.segment == segment),
        key=lambda record: record.p_value,
    )
    parts: dict[str, str] = {}
    values: set[str] = set()
    for record in fired:
        values.add(record.score)
        side = calibration.reference(record.score, segment).side if record.score in calibration.scores else "none"
        effect = effects.get(record.score)
        family = (
            "cusum"
            if record.test == "cusum"
            else {"low": "score", "high": "score", "both": "property"}.get(side, record.score)
        )
        if family in parts:
            continue
        if family == "score" and effect is not None:
            where = "below" if side == "low" else "above"
            parts[family] = (
                f"{effect.ood_rate:.0%} of images {where} {record.score}'s threshold against "
                f"{effect.expected_ood_rate:.0%} expected"
            )
        elif family == "property" and effect is not None:
            moved = "rose" if effect.median_shift > 0 else "fell"
            parts[family] = f"{record.score} {moved} {abs(effect.median_shift):.1f} IQR"
        else:
            parts[family] = record.summary
    shown = list(parts.values())[:most]
    others = len(values) - min(len(parts), most)
    if others > 0:
        shown.append(f"{others} more value{'s' if others > 1 else ''} moved")
    estimate = decision.accuracy.get(segment)
    if estimate is not None:
        shown.append(estimate.describe())
    return "; ".join(shown)
