"""No data as an episode, end to end (real pipeline, MLflow store and webhook receiver on loopback): a silent feed
or segment pages once, reminds every ``reminder_every`` as scheduled runs go by, and sends ``recovered`` when
images come back; re-running pages nothing again; a run over a feed that ended pages its silence once and says
where to stop; state documents of older versions are still read."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pytest

from flows.alerts import SECRET_ENV
from flows.monitor import MonitorConfig, run_monitor
from flows.registry import ThresholdRegistry
from pipelines.store import OutputStore
from scoring import ScoringSettings
from tests.flows.receiver import Receiver
from tests.flows.test_monitor import HOUR, START, TINY, _approve, _noise
from tests.flows.test_monitor import registry as registry  # the fixture, shared

RUN_AFTER = dt.timedelta(minutes=5)  # an hourly schedule's run, five minutes past the window it processes


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    receiver = Receiver()
    yield receiver
    receiver.close()


def _config(tmp_path: Path, source: Path, receiver: Receiver, **fields) -> MonitorConfig:
    return MonitorConfig(
        source=str(source),
        out=str(tmp_path / "out"),
        scoring=ScoringSettings(model=TINY),
        webhooks=(receiver.url,),
        **fields,
    )


def _hour(feed: Path, hour: int, seed: int, *, count: int = 30) -> None:
    for index in range(count):
        when = START + hour * HOUR + dt.timedelta(minutes=index)
        _noise(feed / f"h{hour}-{index}.png", seed + index, when)


def _pages(receiver: Receiver) -> list[tuple[str, str, str, int]]:
    """(kind, segment, window start as YYYY-MM-DDTHH, reminder) of every post, in the order received."""
    return [
        (post["json"]["kind"], post["json"]["segment"], post["json"]["window"]["start"][:13], post["json"]["reminder"])
        for post in receiver.received
    ]


def _at(hour: int) -> str:
    return (START + hour * HOUR).isoformat()[:13]


def test_a_silent_feed_pages_once_reminds_after_reminder_every_and_recovers(
    tmp_path: Path, registry: ThresholdRegistry, receiver: Receiver
) -> None:
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    _hour(feed, 0, 100)
    config = _config(tmp_path, feed, receiver, reminder_every=2 * HOUR)
    # Hourly runs as a schedule makes them: the feed goes dark after 10:00 and comes back at 14:00.
    for hour in range(5):
        if hour == 4:
            _hour(feed, 4, 500)
        report = run_monitor(config, registry=registry, now=START + (hour + 1) * HOUR + RUN_AFTER)
        assert [w.window_start for w in report.windows] == [START + hour * HOUR]
    assert _pages(receiver) == [
        ("no_data", "", _at(1), 0),
        ("no_data", "", _at(3), 1),  # two hours of the runs' clocks after the page
        ("recovered", "", _at(4), 0),
    ]
    reminder, recovered = receiver.received[1]["json"], receiver.received[2]["json"]
    assert reminder["summary"] == (
        "still no images in 2026-11-26T13-00-00Z: the feed has sent none since 2026-11-26T11-00-00Z (reminder 1)"
    )
    assert recovered["summary"] == (
        "images arrive again in the feed in window 2026-11-26T14-00-00Z: no data since 2026-11-26T11-00-00Z"
    )
    # What a receiver tells a data recovery from a drift recovery by.
    assert recovered["decision"] == {"recovers": ["no_data"], "silent_since": (START + HOUR).isoformat()}


def test_a_silent_segment_pages_once_reminds_after_reminder_every_and_recovers(
    tmp_path: Path, registry: ThresholdRegistry, receiver: Receiver
) -> None:
    _approve(registry, tmp_path)
    rows = ["uri,event_time,segment"]
    for hour in range(5):
        for camera in ("cam-a", "cam-b") if hour in (0, 4) else ("cam-a",):  # cam-b is dark from 11:00 to 14:00
            for index in range(25):
                path = tmp_path / "feed" / f"{camera}-{hour}-{index}.png"
                when = START + hour * HOUR + dt.timedelta(minutes=2 * index)
                _noise(path, 7000 + 100 * hour + index + (50 if camera == "cam-b" else 0), when)
                rows.append(f"{path},{when.isoformat()},{camera}")
    (tmp_path / "feed.csv").write_text("\n".join(rows) + "\n")
    config = _config(tmp_path, tmp_path / "feed.csv", receiver, reminder_every=2 * HOUR)
    for hour in range(5):
        report = run_monitor(config, registry=registry, now=START + (hour + 1) * HOUR + RUN_AFTER)
        assert [w.status for w in report.windows] == ["ok"]
    assert _pages(receiver) == [
        ("no_data", "cam-b", _at(1), 0),
        ("no_data", "cam-b", _at(3), 1),
        ("recovered", "cam-b", _at(4), 0),
    ]
    recovered = receiver.received[2]["json"]
    assert recovered["summary"] == (
        "images arrive again in segment 'cam-b' in window 2026-11-26T14-00-00Z: no data since 2026-11-26T11-00-00Z"
    )
    assert recovered["decision"] == {"recovers": ["no_data"], "silent_since": (START + HOUR).isoformat()}


def test_re_running_the_same_windows_pages_nothing_again(
    tmp_path: Path, registry: ThresholdRegistry, receiver: Receiver
) -> None:
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    _hour(feed, 0, 100)
    _hour(feed, 4, 500)
    config = _config(tmp_path, feed, receiver)
    now = START + 5 * HOUR + RUN_AFTER
    report = run_monitor(config, registry=registry, now=now)
    assert [w.status for w in report.windows] == ["ok", "no_data", "no_data", "no_data", "ok"]
    assert _pages(receiver) == [("no_data", "", _at(1), 0), ("recovered", "", _at(4), 0)]
    store = OutputStore(config.out)
    delivered = store.alert_names("delivered")

    again = run_monitor(dataclasses.replace(config, reprocess=True), registry=registry, now=now)
    assert len(again.windows) == 5
    assert again.alerts_queued == 0  # the same alerts, by id, as the first run's
    assert len(receiver.received) == 2
    assert store.alert_names("delivered") == delivered
    assert store.load_state("alert_policy")["no_data"] == {"feed": None, "segments": {}}  # no silence left open


def test_a_feed_that_ended_pages_its_silence_once_a_run_and_says_to_pass_until(
    tmp_path: Path, registry: ThresholdRegistry, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    _hour(feed, 0, 100)  # the feed's last image is at 10:29
    config = _config(tmp_path, feed, receiver)
    # A one-off run three days later: 71 empty windows after the feed's end.
    with caplog.at_level(logging.WARNING, logger="gradwatch.monitor"):
        report = run_monitor(config, registry=registry, now=START + 72 * HOUR + RUN_AFTER)
    assert len(report.windows) == 72
    assert _pages(receiver) == [("no_data", "", _at(1), 0)]
    (told,) = [record.getMessage() for record in caplog.records if "--until" in record.getMessage()]
    assert "from 2026-11-26T10:29:00+00:00" in told
    assert "processes 71 windows after it" in told
    assert told.endswith("pass --until 2026-11-26T11:00:00+00:00 to stop there")

    # A week later, another run over the same silence: one reminder, for a window of its present.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gradwatch.monitor"):
        later = run_monitor(config, registry=registry, now=START + 240 * HOUR + RUN_AFTER)
    assert len(later.windows) == 168
    assert _pages(receiver) == [("no_data", "", _at(1), 0), ("no_data", "", _at(234), 1)]
    assert sum("--until" in record.getMessage() for record in caplog.records) == 1


def test_a_state_document_of_an_older_version_is_read_and_its_drift_episode_is_no_silence(
    tmp_path: Path, registry: ThresholdRegistry, receiver: Receiver
) -> None:
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    _hour(feed, 1, 100)
    config = _config(tmp_path, feed, receiver, since=START)
    store = OutputStore(config.out)
    # As a version before no-data episodes left it: a drift of the unsegmented feed, paged at 09:00, still open;
    # a segment may be named "version".
    episode = {"drifting_since": (START - HOUR).isoformat(), "last_paged": (START - HOUR).isoformat(), "reminders": 0}
    store.save_state("alert_policy", {"": episode, "version": episode})
    report = run_monitor(config, registry=registry, now=START + 2 * HOUR + RUN_AFTER)
    assert [w.status for w in report.windows] == ["no_data", "ok"]
    # The empty window opens a silence, not a second drift page; the next ends both, in one page.
    assert _pages(receiver) == [("no_data", "", _at(0), 0), ("recovered", "", _at(1), 0)]
    recovered = receiver.received[1]["json"]
    assert recovered["decision"]["recovers"] == ["drift", "no_data"]
    assert recovered["decision"]["silent_since"] == START.isoformat()
    assert recovered["summary"] == (
        "the feed is back to the reference distribution in window 2026-11-26T11-00-00Z; "
        "images arrive again in the feed in window 2026-11-26T11-00-00Z: no data since 2026-11-26T10-00-00Z"
    )
    state = store.load_state("alert_policy")
    assert state["drift"]["version"] == episode  # the segment named "version" is still a drift episode
    assert state["drift"][""]["drifting_since"] is None
    assert state["no_data"] == {"feed": None, "segments": {}}


def test_a_camera_that_stays_dark_after_the_whole_feed_comes_back_is_paged(tmp_path: Path) -> None:
    from flows.monitor.paging import AlertContext, AlertPolicy, alerts_for
    from flows.monitor.window import WindowOutcome

    store = OutputStore(str(tmp_path))
    context = AlertContext("m", "1", calibration=None)  # no decision below: the calibration is never read

    def window(hour: int, status: str, segments: set[str], previous: set[str]) -> list[tuple[str, str]]:
        policy = AlertPolicy(store, reminder_every=6 * HOUR, now=START + (hour + 1) * HOUR + RUN_AFTER)
        outcome = WindowOutcome(START + hour * HOUR, START + (hour + 1) * HOUR, status, segments=frozenset(segments))
        alerts = alerts_for(outcome, previous_segments=previous, policy=policy, context=context)
        policy.save()
        return [(alert.kind, alert.segment) for alert in alerts]

    assert window(0, "insufficient_data", {"cam-a", "cam-b"}, set()) == []
    assert window(1, "no_data", set(), {"cam-a", "cam-b"}) == [("no_data", "")]
    # The window before this one had no segments at all; cam-b's silence is known from before the feed's.
    assert window(2, "insufficient_data", {"cam-a"}, set()) == [("recovered", ""), ("no_data", "cam-b")]
