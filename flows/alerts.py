"""Alerts: a versioned payload, webhook and Slack targets, and delivery through a persisted outbox.

An alert is written to the outbox (``OUT/alerts/outbox/<id>.json``, through the output store) before any
delivery is tried, so an outage loses nothing: the next run delivers what is pending. The alert id is derived
from (kind, window, segment, reminder), so re-running a window produces the same id and never pages twice.
Generic webhooks are signed with HMAC-SHA256 over ``"<timestamp>.<body>"`` with the secret from
``GRADWATCH_WEBHOOK_SECRET``. The outbox and the logs name targets by a masked identity, never by URL: a Slack
webhook's path is its credential.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.redaction import redact
from pipelines.store import OutputStore
from scoring import GradwatchError

# 2: the OOD-rate test is named beta_binomial (was binomial); decision.fired lists {test, score, segment} objects
# (were "segment/score/test" strings); lowest_scoring_images became most_out_of_distribution_images.
ALERT_SCHEMA = "gradwatch.alert/2"
AlertKind = Literal["drift", "recovered", "data_quality", "no_data"]
SECRET_ENV = "GRADWATCH_WEBHOOK_SECRET"

log = logging.getLogger("gradwatch.alerts")


class AlertConfigError(GradwatchError):
    """Alert targets are misconfigured; found at start, before any window is processed."""


_DEFAULT_SEVERITY = {"drift": "page", "no_data": "page", "data_quality": "warn", "recovered": "info"}


@dataclass(frozen=True)
class Alert:
    """One alert, as it is stored in the outbox and posted (see README for the schema)."""

    kind: AlertKind
    window_start: dt.datetime
    window_end: dt.datetime
    segment: str
    model_id: str
    threshold_version: str
    summary: str
    decision: dict[str, Any] = field(default_factory=dict)
    # The images furthest out of distribution on the first score that fired, for the on-call engineer to look at.
    most_out_of_distribution: list[str] = field(default_factory=list)
    # What each fired test saw, in words ("sharpness fell 2.1 IQR below the reference median"), most significant first.
    what_moved: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    reminder: int = 0  # 0 for the first page of an episode, n for the n-th reminder
    # How urgent, for receivers to route on: a drift's by the calibration's policy ("page" or "warn", with its
    # reasons); a feed gone dark pages; a failed gate warns; a recovery informs.
    severity: str = ""
    severity_reasons: list[str] = field(default_factory=list)
    # The segment's accuracy estimated without labels (scoring.accuracy.AccuracyEstimate as a dict), when known.
    estimated_accuracy: dict[str, Any] | None = None

    @property
    def level(self) -> str:
        return self.severity or _DEFAULT_SEVERITY[self.kind]

    @property
    def alert_id(self) -> str:
        key = f"{self.kind}|{self.window_start.isoformat()}|{self.segment}|{self.reminder}"
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def payload(self) -> dict[str, Any]:
        return {
            "schema": ALERT_SCHEMA,
            "alert_id": self.alert_id,
            "kind": self.kind,
            "window": {"start": self.window_start.isoformat(), "end": self.window_end.isoformat()},
            "segment": self.segment,
            "model_id": self.model_id,
            "threshold_version": self.threshold_version,
            "summary": self.summary,
            "what_moved": self.what_moved,
            "reminder": self.reminder,
            "severity": {"level": self.level, "reasons": self.severity_reasons},
            "estimated_accuracy": self.estimated_accuracy,
            "decision": self.decision,
            "most_out_of_distribution_images": self.most_out_of_distribution,
            "links": self.links,
        }


@dataclass(frozen=True)
class Target:
    """Where alerts go: a generic signed webhook, or a Slack-compatible incoming webhook."""

    url: str
    kind: Literal["webhook", "slack"] = "webhook"

    def body(self, payload: Mapping[str, Any]) -> bytes:
        """What is posted for an alert's payload (as :meth:`Alert.payload` makes it and the outbox keeps it)."""
        if self.kind == "slack":
            # Outboxes written before alerts had a severity page on drift as they always did.
            level = (payload.get("severity") or {}).get("level") or _DEFAULT_SEVERITY.get(payload["kind"], "warn")
            icon = {"page": ":rotating_light:", "info": ":white_check_mark:"}.get(level, ":warning:")
            text = f"{icon} *gradwatch {payload['kind']}* ({level}) {payload['summary']}"
            # Outboxes written before alerts said what moved have no such list.
            text += "".join(f"\n• {moved}" for moved in payload.get("what_moved", []))
            return json.dumps({"text": text, "gradwatch": payload}, sort_keys=True).encode()
        return json.dumps(payload, sort_keys=True).encode()

    @property
    def identity(self) -> str:
        """How the outbox records and logs name this target (see :func:`target_identity`)."""
        return target_identity(self.url)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``: receivers recompute it and reject old timestamps."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: int = 300) -> bool:
    """What a receiver does: constant-time compare, and refuse timestamps more than ``max_age_s`` away.

    The window is the same both ways: a sender's clock up to ``max_age_s`` ahead is tolerated, a timestamp further
    in the future is refused like a replay. A timestamp that is not the decimal integer as sent, or a signature
    that is not ASCII, is refused rather than raised: whatever a client sends, the answer is False.
    """
    if not isinstance(timestamp, str) or not timestamp.isascii() or not timestamp.isdigit():
        return False
    sent = int(timestamp)
    # The HMAC covers the header as sent: "+17..." or "017..." would verify against another spelling's signature.
    if str(sent) != timestamp or abs(time.time() - sent) > max_age_s:
        return False
    if not isinstance(signature, str) or not signature.isascii():
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


def target_identity(url: str) -> str:
    """What the outbox and logs keep of a target URL: scheme and host, and a short hash of the whole URL.

    A Slack webhook's path is its credential, and any URL may carry a user and password: neither is reversible
    from ``https://hooks.slack.com sha256:1a2b3c4d5e6f``, yet each target keeps an identity of its own.

    Raises:
        ValueError: a URL urllib cannot parse (a port that is not a number, a bracket left open).
    """
    parts = urllib.parse.urlsplit(url)
    port = "" if parts.port is None else f":{parts.port}"
    return f"{parts.scheme}://{parts.hostname or ''}{port} sha256:{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def resolve_target(target: str) -> str:
    """A target URL, or the URL a reference names: ``env:VARIABLE`` (the worker's environment) or ``secret:BLOCK``
    (a Prefect Secret block), so that a deployment's parameters, which Prefect stores and shows, hold no URL whose
    path is a credential.

    Raises:
        AlertConfigError: the variable is unset, or the block cannot be loaded.
    """
    if target.startswith("env:"):
        name = target.removeprefix("env:")
        value = os.environ.get(name, "").strip()
        if not value:
            raise AlertConfigError(
                f"alert target {target!r}: the environment variable {name} is not set on this worker"
            )
        return value
    if target.startswith("secret:"):
        from prefect.blocks.system import Secret

        name = target.removeprefix("secret:")
        try:
            return str(Secret.load(name).get()).strip()
        except Exception as error:  # no such block, or no Prefect API to ask (httpx's errors are not OSErrors)
            raise AlertConfigError(
                f"alert target {target!r}: cannot load the Prefect Secret block {name!r} ({type(error).__name__}); "
                "create it (prefect block create secret) or point PREFECT_API_URL at the server that has it"
            ) from None
    return target


def targets_from(webhooks: Sequence[str], slack_webhooks: Sequence[str]) -> list[Target]:
    """Validate target URLs (or resolve their references, see :func:`resolve_target`) at start, and that generic
    webhooks have a secret to sign with.

    Raises:
        AlertConfigError: a reference that does not resolve; a URL that is not http(s), does not parse or carries a
            user or password; webhooks without GRADWATCH_WEBHOOK_SECRET.
    """
    targets = [Target(resolve_target(url), "webhook") for url in webhooks] + [
        Target(resolve_target(url), "slack") for url in slack_webhooks
    ]
    for target in targets:
        # A Slack URL's path is its credential: only its masked identity may be shown.
        described = repr(redact(target.url)) if target.kind == "webhook" else "(URL withheld)"
        try:
            parts, identity = urllib.parse.urlsplit(target.url), target.identity
        except ValueError as error:
            raise AlertConfigError(f"{target.kind} target {described} does not parse as a URL ({error})") from None
        shown = redact(target.url) if target.kind == "webhook" else identity
        if not target.url.startswith(("http://", "https://")):
            raise AlertConfigError(f"{target.kind} target {shown!r} is not an http(s) URL")
        if parts.username is not None or parts.password is not None:
            # Refused here, or every delivery would fail as "unreachable" with nothing saying why.
            raise AlertConfigError(
                f"{target.kind} target {shown!r} carries a user or password, which urllib never sends (it looks "
                f"'user:pass@host' up as a host name); drop it from the URL: generic webhooks are authenticated by "
                f"their signature ({SECRET_ENV}), and a receiver that needs more should check a header"
            )
    if webhooks and not os.environ.get(SECRET_ENV):
        raise AlertConfigError(
            f"--webhook needs a signing secret: set {SECRET_ENV} in the environment (never on the command line)"
        )
    return targets


class Outbox:
    """Alerts waiting for delivery, one JSON document each, and the record of what was delivered where."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store

    def add(self, alert: Alert) -> bool:
        """Queue an alert unless it was queued or delivered before (same kind, window, segment, reminder)."""
        # Window first in the name, so pending alerts go out in time order.
        name = f"{alert.window_start.strftime('%Y%m%dT%H%M%S')}-{alert.alert_id}.json"
        if self.store.has_alert("outbox", name) or self.store.has_alert("delivered", name):
            return False
        self.store.write_alert("outbox", name, {"alert": alert.payload(), "delivered_to": []})
        return True

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return [(name, self.store.read_alert("outbox", name)) for name in self.store.alert_names("outbox")]

    def delivered(self) -> list[dict[str, Any]]:
        return [self.store.read_alert("delivered", name) for name in self.store.alert_names("delivered")]

    def record(self, name: str, entry: dict[str, Any], *, done: bool) -> None:
        if done:
            # Written to delivered before it leaves the outbox: a crash in between re-sends nothing, since add()
            # and deliver_pending() both see it delivered.
            self.store.write_alert("delivered", name, entry)
            self.store.remove_alert("outbox", name)
        else:
            self.store.write_alert("outbox", name, entry)


def deliver_pending(
    outbox: Outbox, targets: Sequence[Target], *, attempts: int = 3, backoff_s: float = 1.0, timeout_s: float = 10.0
) -> tuple[int, int]:
    """Post every pending alert to every target it has not reached yet.

    Timeouts, connection errors and 5xx answers are retried with exponential backoff; a 4xx is not (the
    request itself is wrong). What still fails stays in the outbox for the next run, and so does everything when
    there are no targets: an alert is delivered when a target took it, never by default.

    Returns:
        (alerts fully delivered, alerts still pending).
    """
    pending = outbox.pending()
    if not targets:
        return 0, len(pending)
    delivered = still_pending = 0
    secret = os.environ.get(SECRET_ENV, "")
    for name, entry in pending:
        if outbox.store.has_alert("delivered", name):  # delivered by a run that stopped before clearing it
            outbox.store.remove_alert("outbox", name)
            continue
        # Outboxes written by older versions list raw URLs: rewritten masked, and still never delivered twice.
        entry["delivered_to"] = [_masked(reached) for reached in entry["delivered_to"]]
        for target in targets:
            if target.identity in entry["delivered_to"]:
                continue
            if _post(target, entry["alert"], secret, attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s):
                entry["delivered_to"].append(target.identity)
        done = all(target.identity in entry["delivered_to"] for target in targets)
        outbox.record(name, entry, done=done)
        delivered += done
        still_pending += not done
    return delivered, still_pending


def _masked(reached: str) -> str:
    if " sha256:" in reached:
        return reached
    try:
        return target_identity(reached)
    except ValueError:  # a URL older versions took without parsing it; no target of this run can match it
        return f"unparsable URL sha256:{hashlib.sha256(reached.encode()).hexdigest()[:12]}"


def _post(
    target: Target, payload: Mapping[str, Any], secret: str, *, attempts: int, backoff_s: float, timeout_s: float
) -> bool:
    body = target.body(payload)
    alert_id = payload["alert_id"]
    for attempt in range(attempts):
        headers = {"Content-Type": "application/json", "User-Agent": "gradwatch"}
        if target.kind == "webhook":
            timestamp = int(time.time())
            headers["X-Gradwatch-Timestamp"] = str(timestamp)
            headers["X-Gradwatch-Signature"] = sign(secret, timestamp, body)
            headers["X-Gradwatch-Alert-Id"] = alert_id
        request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if 200 <= response.status < 300:
                    return True
        except urllib.error.HTTPError as error:
            if error.code < 500:
                log.error("%s refused alert %s with HTTP %s; not retried", target.identity, alert_id, error.code)
                return False
            log.warning("%s answered HTTP %s to alert %s", target.identity, error.code, alert_id)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            log.warning("%s unreachable for alert %s: %s", target.identity, alert_id, type(error).__name__)
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2**attempt)
    return False
