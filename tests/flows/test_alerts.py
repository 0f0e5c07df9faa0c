"""Alert delivery against a real HTTP receiver on loopback."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.alerts import SECRET_ENV, Alert, AlertConfigError, Outbox, deliver_pending, sign, targets_from, verify
from flows.monitor.paging import AlertPolicy
from pipelines.store import OutputStore
from tests.flows.conftest import free_port
from tests.flows.receiver import Receiver

SECRET = "test-signing-secret"
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _alert(kind: str = "drift", hour: int = 13, segment: str = "cam-1", reminder: int = 0) -> Alert:
    start = dt.datetime(2026, 11, 26, hour, tzinfo=dt.UTC)
    return Alert(kind, start, start + HOUR, segment, "m@1", "3", f"{kind} on {segment}", reminder=reminder)


def test_signed_webhook_verifies(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(OutputStore(str(tmp_path)))
    assert outbox.add(_alert())
    assert deliver_pending(outbox, targets_from([receiver.url], [])) == (1, 0)
    (post,) = receiver.received
    headers = post["headers"]
    assert verify(SECRET, headers["X-Gradwatch-Timestamp"], post["body"], headers["X-Gradwatch-Signature"])
    assert not verify("wrong", headers["X-Gradwatch-Timestamp"], post["body"], headers["X-Gradwatch-Signature"])
    assert not verify(
        SECRET, str(int(headers["X-Gradwatch-Timestamp"]) - 3600), post["body"], headers["X-Gradwatch-Signature"]
    )
    assert post["json"]["schema"] == "gradwatch.alert/2"
    assert post["json"]["alert_id"] == headers["X-Gradwatch-Alert-Id"]
    assert SECRET not in post["body"].decode()


def test_receiver_down_or_failing_gets_it_later_exactly_once(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(OutputStore(str(tmp_path)))
    outbox.add(_alert())
    down = targets_from([f"http://127.0.0.1:{free_port()}/hook"], [])
    assert deliver_pending(outbox, down, attempts=2, backoff_s=0.01) == (0, 1)
    receiver.fail_with = 500
    targets = targets_from([receiver.url], [])
    assert deliver_pending(outbox, targets, attempts=2, backoff_s=0.01) == (0, 1)
    assert receiver.received == []
    receiver.fail_with = None
    assert deliver_pending(outbox, targets) == (1, 0)
    assert deliver_pending(outbox, targets) == (0, 0)
    assert len(receiver.received) == 1


def test_rerun_of_a_window_never_pages_twice(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(OutputStore(str(tmp_path)))
    targets = targets_from([receiver.url], [])
    assert outbox.add(_alert())
    deliver_pending(outbox, targets)
    assert not outbox.add(_alert())  # same window, segment and kind
    assert deliver_pending(outbox, targets) == (0, 0)
    assert len(receiver.received) == 1


def test_slack_and_webhook_targets_together(tmp_path: Path, receiver: Receiver) -> None:
    slack = Receiver()
    try:
        outbox = Outbox(OutputStore(str(tmp_path)))
        outbox.add(_alert("no_data", segment="dock"))
        assert deliver_pending(outbox, targets_from([receiver.url], [slack.url])) == (1, 0)
        (message,) = slack.received
        # A feed gone dark pages: the icon and the level say so before the summary.
        assert message["json"]["text"].startswith(":rotating_light: *gradwatch no_data* (page) ")
        assert "X-Gradwatch-Signature" not in message["headers"]
        assert receiver.received[0]["json"]["kind"] == "no_data"
    finally:
        slack.close()


def test_drift_pages_once_reminds_then_recovers(tmp_path: Path) -> None:
    policy = AlertPolicy(OutputStore(str(tmp_path)), reminder_every=3 * HOUR)
    start = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
    sequence = [False, True, True, True, True, True, False, False]
    sent = [policy.on_decision("cam", start + i * HOUR, drift) for i, drift in enumerate(sequence)]
    assert sent == [(None, 0), ("drift", 0), (None, 0), (None, 0), ("drift", 1), (None, 0), ("recovered", 0), (None, 0)]
    policy.save()
    reloaded = AlertPolicy(OutputStore(str(tmp_path)), reminder_every=3 * HOUR)
    assert reloaded.on_decision("cam", start + 9 * HOUR, True) == ("drift", 0)
    assert reloaded.on_decision("cam", start + 9 * HOUR, True) == (None, 0)  # the same window again


def test_bad_configuration_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AlertConfigError, match="not an http"):
        targets_from(["ftp://example/hook"], [])
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(AlertConfigError, match=SECRET_ENV):
        targets_from(["http://127.0.0.1:9/hook"], [])
    assert targets_from([], ["http://127.0.0.1:9/slack"])  # Slack URLs carry their own secret


def test_pending_alerts_go_out_in_time_order(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(OutputStore(str(tmp_path)))
    for hour in (14, 12, 13):
        outbox.add(_alert("no_data", hour=hour))
    deliver_pending(outbox, targets_from([receiver.url], []))
    assert [post["json"]["window"]["start"][11:13] for post in receiver.received] == ["12", "13", "14"]


def test_a_run_without_targets_leaves_alerts_pending_for_one_that_has_them(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(OutputStore(str(tmp_path)))
    outbox.add(_alert())
    assert deliver_pending(outbox, []) == (0, 1)  # a backfill without targets: nothing is delivered by default
    assert deliver_pending(outbox, []) == (0, 1)
    assert deliver_pending(outbox, targets_from([receiver.url], [])) == (1, 0)
    assert len(receiver.received) == 1


def test_an_alert_delivered_just_before_a_crash_is_not_sent_again(tmp_path: Path, receiver: Receiver) -> None:
    store = OutputStore(str(tmp_path))
    outbox = Outbox(store)
    outbox.add(_alert())
    targets = targets_from([receiver.url], [])
    ((name, entry),) = outbox.pending()
    store.write_alert("delivered", name, {**entry, "delivered_to": [receiver.url]})  # the run died here
    assert deliver_pending(outbox, targets) == (0, 0)
    assert receiver.received == []
    assert outbox.pending() == []


def test_a_drift_alert_says_what_moved_to_the_webhook_and_to_slack(tmp_path: Path, receiver: Receiver) -> None:
    slack = Receiver()
    try:
        outbox = Outbox(OutputStore(str(tmp_path)))
        moved = ["sharpness fell 2.1 IQR below the reference median (KS 0.62, p 1e-09)", "features moved: MMD 0.081"]
        start = dt.datetime(2026, 11, 26, 13, tzinfo=dt.UTC)
        outbox.add(Alert("drift", start, start + HOUR, "cam-1", "m@1", "3", "drift on cam-1", what_moved=moved))
        assert deliver_pending(outbox, targets_from([receiver.url], [slack.url])) == (1, 0)
        assert receiver.received[0]["json"]["what_moved"] == moved
        text = slack.received[0]["json"]["text"]
        assert text.splitlines()[1:] == [f"• {line}" for line in moved]
    finally:
        slack.close()


def test_verify_refuses_future_malformed_and_non_ascii_input() -> None:
    body = b'{"kind": "drift"}'
    now = int(time.time())
    assert verify(SECRET, str(now), body, sign(SECRET, now, body))
    assert verify(SECRET, str(now + 60), body, sign(SECRET, now + 60, body))  # a receiver's clock a minute behind
    future = now + 3600
    assert not verify(SECRET, str(future), body, sign(SECRET, future, body))
    for timestamp in ("soon", "", "1.5e9", str(now) + ".0", None):
        assert not verify(SECRET, timestamp, body, sign(SECRET, now, body))  # type: ignore[arg-type]
    # The signature covers the header as sent: a re-spelt timestamp is not the one that was signed.
    for respelt in (f"+{now}", f" {now}", f"0{now}"):
        assert not verify(SECRET, respelt, body, sign(SECRET, now, body))
    assert not verify(SECRET, str(now), body, "sha256=é")
    assert not verify(SECRET, str(now), body, None)  # type: ignore[arg-type]


def test_a_webhook_url_with_user_and_password_is_refused_at_start() -> None:
    with pytest.raises(AlertConfigError) as refused:
        targets_from(["https://ops:hunter2@hooks.example.com/gradwatch"], [])
    message = str(refused.value)
    assert "hunter2" not in message
    assert "https://hooks.example.com/gradwatch" in message
    assert SECRET_ENV in message
    with pytest.raises(AlertConfigError, match="user or password") as slack:
        targets_from([], ["https://ops:hunter2@hooks.slack.com/services/T0/B0/slacksecret"])
    assert "hunter2" not in str(slack.value)
    assert "slacksecret" not in str(slack.value)


SLACK_SECRET = "xoxb-path-is-the-credential"


def test_outbox_files_and_logs_keep_only_a_masked_target(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack = receiver.url.replace("/hook", f"/services/T0/B0/{SLACK_SECRET}")
    down = f"http://127.0.0.1:{free_port()}/services/T0/B1/{SLACK_SECRET}"
    outbox = Outbox(OutputStore(str(tmp_path)))
    outbox.add(_alert())
    caplog.set_level(logging.INFO, logger="gradwatch.alerts")
    assert deliver_pending(outbox, targets_from([], [slack, down]), attempts=1) == (0, 1)
    assert deliver_pending(outbox, targets_from([], [slack]), attempts=1) == (1, 0)
    assert len(receiver.received) == 1  # the target delivered in the first run is not posted again
    written = "".join(path.read_text() for path in (tmp_path / "alerts").rglob("*.json"))
    assert "127.0.0.1" in written
    assert SLACK_SECRET not in written
    assert "unreachable" in caplog.text
    assert SLACK_SECRET not in caplog.text


def test_an_outbox_written_with_raw_urls_delivers_nothing_twice(tmp_path: Path, receiver: Receiver) -> None:
    other = Receiver()
    try:
        store = OutputStore(str(tmp_path))
        outbox = Outbox(store)
        outbox.add(_alert())
        ((name, entry),) = outbox.pending()
        store.write_alert("outbox", name, {**entry, "delivered_to": [receiver.url]})  # as older versions wrote it
        assert deliver_pending(outbox, targets_from([receiver.url], [other.url])) == (1, 0)
        assert receiver.received == []
        assert len(other.received) == 1
        (delivered,) = outbox.delivered()
        assert len(delivered["delivered_to"]) == 2
        assert receiver.url not in delivered["delivered_to"]
    finally:
        other.close()


def test_a_target_url_that_does_not_parse_is_refused_at_start() -> None:
    with pytest.raises(AlertConfigError, match="does not parse as a URL"):
        targets_from(["http://127.0.0.1:port/hook"], [])
    with pytest.raises(AlertConfigError, match="does not parse as a URL") as slack:
        targets_from([], [f"https://[hooks.slack.com/services/T0/B0/{SLACK_SECRET}"])
    assert SLACK_SECRET not in str(slack.value)


def test_a_target_can_be_named_by_an_environment_variable_so_no_parameter_holds_its_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slack = "https://hooks.slack.com/services/T000/B000/very-secret-path"
    monkeypatch.setenv("ONCALL_SLACK", slack)
    [target] = targets_from([], ["env:ONCALL_SLACK"])
    assert (target.url, target.kind) == (slack, "slack")
    monkeypatch.delenv("ONCALL_SLACK")
    with pytest.raises(AlertConfigError, match="environment variable ONCALL_SLACK is not set"):
        targets_from([], ["env:ONCALL_SLACK"])


def test_a_secret_block_with_no_prefect_api_to_ask_is_a_configuration_error() -> None:
    # In a process of its own: Prefect keeps the API it was first pointed at for the rest of a process.
    check = (
        "from flows.alerts import AlertConfigError, targets_from\n"
        "try:\n    targets_from([], ['secret:oncall'])\n"
        "except AlertConfigError as error:\n    print(error)\n"
    )
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert "cannot load the Prefect Secret block 'oncall'" in result.stdout, result.stderr
