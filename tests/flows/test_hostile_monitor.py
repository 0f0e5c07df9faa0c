"""Hostile and unlucky inputs through the monitor, end to end (real pipeline, MLflow store and webhook receiver):
no item stops monitoring, no window is planned from an impossible time, no stale row is decided on, a segment's
name is data, one monitor runs per OUT, and pages leave as soon as their window is decided."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path

import pytest

from flows.alerts import SECRET_ENV, Alert, Outbox
from flows.calibrate import calibrate_reference
from flows.monitor import Monitor, MonitorConfig, run_monitor
from flows.monitor.lease import Lease, LeaseLostError, MonitorBusyError
from flows.registry import ThresholdRegistry, segment_key
from pipelines.store import OutputStore
from pipelines.times import window_label
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig
from tests.flows.receiver import Receiver
from tests.flows.test_monitor import HOUR, START, TINY, _approve, _flat, _noise
from tests.flows.test_monitor import registry as registry  # the fixture, shared
from tests.pipelines.test_hostile import PASSWORD
from tests.pipelines.test_hostile import image_server as image_server  # the fixture, shared

NOW = START + 2 * HOUR + dt.timedelta(minutes=5)
HOSTILE_SEGMENTS = ["cam/1", "a,b\"c'<x>", "line\nbreak", "..", "x" * 300]


def _config(tmp_path: Path, source: Path, **fields) -> MonitorConfig:
    return MonitorConfig(source=str(source), out=str(tmp_path / "out"), scoring=ScoringSettings(model=TINY), **fields)


def _approved_feed(registry: ThresholdRegistry, tmp_path: Path, first_seed: int, make=_noise) -> Path:
    """Approved thresholds, and a feed of 25 images a minute apart in the window at START."""
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    for index in range(25):
        make(feed / f"{index}.png", first_seed + index, START + dt.timedelta(minutes=index))
    return feed


def _manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_hostile_segment_names_are_decided_logged_and_paged_under_their_own_names(
    tmp_path: Path, registry: ThresholdRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    _approve(registry, tmp_path)
    rows = []
    for number, segment in enumerate(HOSTILE_SEGMENTS):
        make = _flat if segment == "cam/1" else _noise  # the segment with a "/" goes dark
        for index in range(25):
            path = tmp_path / "feed" / f"{number}-{index}.png"
            when = START + dt.timedelta(minutes=2 * index)
            make(path, 5000 + 100 * number + index, when)
            rows.append({"uri": str(path), "event_time": when.isoformat(), "segment": segment})
    receiver = Receiver()
    try:
        config = _config(tmp_path, _manifest(tmp_path / "feed.jsonl", rows), webhooks=(receiver.url,))
        report = run_monitor(config, registry=registry, now=START + HOUR + dt.timedelta(minutes=5))
    finally:
        receiver.close()
    [window] = report.windows
    assert window.status == "drift"
    assert {test.segment for test in window.fired} == {"cam/1"}
    drift = [post["json"] for post in receiver.received if post["json"]["kind"] == "drift"]
    assert [alert["segment"] for alert in drift] == ["cam/1"]

    run = registry.client.get_run(report.mlflow_run_id)
    keys = {segment: segment_key(segment) for segment in HOSTILE_SEGMENTS}
    assert len(set(keys.values())) == len(HOSTILE_SEGMENTS)  # none of them stands for another
    assert {run.data.metrics[f"{key}/n"] for key in keys.values()} == {25.0}
    # None of them can be a metric name as it is; each is named in a tag.
    assert {run.data.tags[f"gradwatch.segment.{key}"] for key in keys.values()} == set(HOSTILE_SEGMENTS)
    assert run.info.status == "FINISHED"


def test_epoch_zero_and_other_impossible_times_plan_no_windows_and_leave_none_in_the_watermark(
    tmp_path: Path, registry: ThresholdRegistry
) -> None:
    _approve(registry, tmp_path)
    rows = []
    for index in range(25):
        when = START + dt.timedelta(minutes=2 * index)
        _noise(tmp_path / "feed" / f"{index}.png", 300 + index, when)
        rows.append({"uri": str(tmp_path / "feed" / f"{index}.png"), "event_time": when.isoformat()})
    for index, event_time in enumerate([0, -1, "1e20", "12345678901234567890123"]):
        _noise(tmp_path / "feed" / f"bad-{index}.png", 900 + index, START)
        rows.append({"uri": str(tmp_path / "feed" / f"bad-{index}.png"), "event_time": event_time})
    store = OutputStore(str(tmp_path / "out"))
    # As a version before this fix left it: a 1970 window in the watermark, from rows since corrected.
    store.save_state("watermark", {"1970-01-01T00-00-00Z": {"fingerprint": "0", "status": "no_data", "segments": []}})
    config = _config(tmp_path, _manifest(tmp_path / "feed.jsonl", rows))
    report = run_monitor(config, registry=registry, now=START + HOUR + dt.timedelta(minutes=5))
    assert [(w.window_start, w.status, w.scored) for w in report.windows] == [(START, "ok", 25)]
    assert report.alerts_queued == 0  # no "no data" page for the 494,000 hours since 1970
    assert list(store.load_state("watermark")) == [window_label(START)]
    reasons = sorted(row["reason"] for row in store.read_table("rejected").to_pylist())
    assert reasons == ["bad_event_time", "bad_event_time", "implausible_event_time", "implausible_event_time"]


def test_a_window_whose_images_all_went_keeps_no_stale_rows(
    tmp_path: Path, registry: ThresholdRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    feed = _approved_feed(registry, tmp_path, 400)
    config = _config(tmp_path, feed)
    assert [w.status for w in run_monitor(config, registry=registry, now=START + HOUR + HOUR / 12).windows] == ["ok"]
    for path in feed.iterdir():
        path.unlink()
    again = run_monitor(config, registry=registry, now=START + HOUR + HOUR / 12)
    assert [w.status for w in again.windows] == ["no_data"]
    # The reference check read the emptied window's statistics too (it once failed on their missing columns).
    assert not [record for record in caplog.records if "reference check" in record.getMessage()]
    store = OutputStore(config.out)
    assert [store.read_window(table, START).num_rows for table in ("scores", "windows", "rejected")] == [0, 0, 0]


def test_a_second_monitor_on_one_out_exits_saying_who_holds_it(
    tmp_path: Path, registry: ThresholdRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    feed = _approved_feed(registry, tmp_path, 500)
    receiver = Receiver()
    try:
        config = _config(tmp_path, feed, webhooks=(receiver.url,))
        store = OutputStore(config.out)
        # An alert the holder has queued and is about to deliver: the refused run must leave it to the holder.
        Outbox(store).add(Alert("no_data", START, START + HOUR, "", "m@1", "3", "no images"))
        holder = Lease(store, ttl=dt.timedelta(minutes=5), settle_s=0.05)
        holder.acquire()
        try:
            with pytest.raises(MonitorBusyError, match=r"another monitor holds .*pid \d+.*lease until"):
                run_monitor(config, registry=registry, now=NOW)
            assert store.load_state("watermark") is None  # it touched nothing
            assert receiver.received == []  # and paged nothing
        finally:
            holder.release()
        assert [w.status for w in run_monitor(config, registry=registry, now=NOW).windows] == ["ok", "no_data"]
    finally:
        receiver.close()
    assert store.load_state("lease") is None  # given back
    assert "no images" in {post["json"]["summary"] for post in receiver.received}


def test_two_leases_started_together_leave_one_holder(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    first, second = (Lease(store, ttl=dt.timedelta(minutes=5), settle_s=0.3) for _ in range(2))
    outcomes: dict[str, object] = {}

    def take(name: str, lease: Lease) -> None:
        try:
            lease.acquire()
            outcomes[name] = "held"
        except Exception as error:  # anything but MonitorBusyError fails the assertion below, by name
            outcomes[name] = error

    threads = [threading.Thread(target=take, args=item) for item in (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(outcome).__name__ for outcome in outcomes.values()) == ["MonitorBusyError", "str"], outcomes
    for lease in (first, second):
        lease.release()


def test_a_killed_run_leaves_out_for_the_next_once_its_lease_expires_and_its_mlflow_run_is_marked_failed(
    tmp_path: Path, registry: ThresholdRegistry
) -> None:
    feed = _approved_feed(registry, tmp_path, 600)
    config = _config(tmp_path, feed, lease_ttl=dt.timedelta(seconds=1))
    killed = Monitor(config, now=NOW)
    killed.load_thresholds(registry)
    assert killed.plan()
    killed.lease._stop.set()  # kill -9: nothing renews, releases or ends its MLflow run
    killed_run = killed.report.mlflow_run_id
    assert registry.client.get_run(killed_run).info.status == "RUNNING"

    after = run_monitor(_config(tmp_path, feed, lease_wait=dt.timedelta(seconds=10)), registry=registry,
                        now=NOW)  # fmt: skip
    assert [w.status for w in after.windows] == ["ok", "no_data"]
    assert registry.client.get_run(killed_run).info.status == "FAILED"
    with pytest.raises(LeaseLostError, match="lost its lease"):
        killed.process(START)  # woken up: it writes and pages nothing more


def test_pages_leave_as_soon_as_their_window_is_decided(
    tmp_path: Path, registry: ThresholdRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    feed = _approved_feed(registry, tmp_path, 0, make=_flat)
    receiver = Receiver()
    try:
        monitor = Monitor(_config(tmp_path, feed, webhooks=(receiver.url,)), now=NOW)
        monitor.load_thresholds(registry)
        first, _ = monitor.plan()
        monitor.process(first)
        # Before the run goes on (or is killed), the drift it decided has been paged.
        assert {post["json"]["kind"] for post in receiver.received} >= {"drift"}
        assert monitor.outbox.pending() == []
        monitor.release()
    finally:
        receiver.close()


def test_the_whole_hostile_corpus_through_the_monitor_reconciles_and_leaks_nothing(
    tmp_path: Path,
    registry: ThresholdRegistry,
    monkeypatch: pytest.MonkeyPatch,
    image_server: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    _approve(registry, tmp_path)
    feed = tmp_path / "feed"
    rows = []
    for index in range(25):
        when = START + dt.timedelta(minutes=2 * index)
        _noise(feed / f"{index}.png", 700 + index, when)
        rows.append({"uri": f"{index}.png", "event_time": when.isoformat(), "segment": HOSTILE_SEGMENTS[index % 5]})
    when = START.isoformat()
    (feed / "epoch0.png").write_bytes((feed / "2.png").read_bytes())
    os.mkfifo(feed / "pipe.png")
    os.symlink("loop.png", feed / "loop.png")
    not_utf8 = os.fsencode(feed) + b"/caf\xe9.png"
    Path(os.fsdecode(not_utf8)).write_bytes((feed / "0.png").read_bytes())
    hostile = [
        {"uri": "pipe.png", "event_time": when},
        {"uri": "loop.png", "event_time": when},
        {"uri": os.fsdecode(not_utf8), "event_time": when},
        {"uri": "./0.png", "event_time": when},  # an alias of a row above
        {"uri": str(feed / "1.png"), "event_time": when},  # and another
        {"uri": "epoch0.png", "event_time": 0},
        {"uri": "3.png", "event_time": "1e20"},
        {"uri": f"http://viewer:{PASSWORD}@{image_server}/cam.png", "event_time": when, "segment": "web"},
        {"uri": f"http://viewer:{PASSWORD}@{image_server}/missing.png", "event_time": when, "segment": "web"},
        {"event_time": when},
    ]
    manifest = feed / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows + hostile))
    receiver = Receiver()
    caplog.set_level("DEBUG")
    try:
        config = _config(tmp_path, manifest, webhooks=(receiver.url,))
        report = run_monitor(config, registry=registry, now=START + HOUR + dt.timedelta(minutes=5))
        again = run_monitor(config, registry=registry, now=START + HOUR + dt.timedelta(minutes=5))
    finally:
        receiver.close()
    [window] = report.windows
    assert again.windows == []
    store = OutputStore(config.out)
    scores, rejected = store.read_table("scores").to_pylist(), store.read_table("rejected").to_pylist()
    assert window.scored == len(scores) == 26  # the 25, and the one behind a password
    assert len(rejected) == len(hostile) - 1  # every other row, accounted for once
    assert len({row["uri"] for row in scores}) == len(scores)
    assert {row["segment"] for row in scores} == {*HOSTILE_SEGMENTS, "web"}
    expected = ["not_a_file", "unreadable", "bad_name", "duplicate", "duplicate", "implausible_event_time",
                "bad_event_time", "not_found", "missing_uri"]  # fmt: skip
    assert sorted(row["reason"] for row in rejected) == sorted(expected)
    secret = PASSWORD.encode()
    assert all(secret not in path.read_bytes() for path in Path(config.out).rglob("*") if path.is_file())
    assert all(secret not in post["body"] for post in receiver.received)
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err + caplog.text


def test_a_reference_of_any_age_calibrates(tmp_path: Path, registry: ThresholdRegistry) -> None:
    old = dt.datetime(1995, 6, 1, tzinfo=dt.UTC)  # an archive: plausible event times concern monitoring only
    for index in range(120):
        _noise(tmp_path / "archive" / f"{index}.png", 2000 + index, old)
    config = CalibrationConfig(min_window=20, check_windows=20, check_window_sizes=(20,))
    version, _ = calibrate_reference(
        str(tmp_path / "archive"), registry=registry, scoring=ScoringSettings(model=TINY), config=config
    )
    assert version.version
