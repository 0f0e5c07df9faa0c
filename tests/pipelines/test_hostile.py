"""Hostile and unlucky inputs through real pipelines: every item is scored or rejected with its name and reason,
none stops the run, none is scored twice, none leaves stale rows, and no credential reaches an output file."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import http.server
import json
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.pipeline import RunSummary, ScoringConfig, run_scoring
from pipelines.read import ReadImage, TransientReadError
from pipelines.records import ImageRef
from pipelines.redaction import redact, redact_logs
from pipelines.sources import SourceError, open_source
from pipelines.store import OutputStore
from pipelines.times import PlausibleTimes, parse_event_time
from scoring import ScoringSettings
from tests.pipelines.conftest import TINY, utc, write_image

WHEN = utc("2026-11-26T13:20:00Z")
PASSWORD = "hunter2-do-not-store"


def _run(source: Path | str, out: Path, **config) -> RunSummary:
    return run_scoring(ScoringConfig(source=str(source), out=str(out), scoring=ScoringSettings(model=TINY), **config))


def _rows(out: Path, table: str) -> list[dict]:
    return OutputStore(str(out)).read_table(table).to_pylist()


def _all_output_bytes(out: Path) -> bytes:
    return b"".join(path.read_bytes() for path in out.rglob("*") if path.is_file())


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """Good images beside a link loop, a link to a folder that loops back, a broken link, a FIFO, a name that is
    not UTF-8, and a link to a good image."""
    root = tmp_path / "feed"
    for index in range(3):
        write_image(root / "cam" / f"{index}.png", index, mtime=WHEN)
    os.symlink("self", root / "self")  # a link to itself: ELOOP
    os.symlink("..", root / "cam" / "up")  # a folder link back up: listing it would never end
    os.symlink("gone.png", root / "broken.png")
    os.mkfifo(root / "cam" / "pipe.png")  # opening it would wait for a writer forever
    not_utf8 = os.path.join(os.fsencode(root / "cam"), b"caf\xe9.png")
    with open(not_utf8, "wb") as file:
        file.write((root / "cam" / "0.png").read_bytes())
    os.utime(not_utf8, (WHEN.timestamp(), WHEN.timestamp()))
    os.symlink(root / "cam" / "1.png", root / "alias.png")
    return root


def test_a_folder_of_hostile_entries_scores_the_good_images_and_rejects_each_other_by_name(
    hostile_folder: Path, tmp_path: Path
) -> None:
    listed = sorted(type(entry).__name__ for entry in open_source(str(hostile_folder)).list())
    assert listed == ["ImageRef"] * 4 + ["Rejected"] * 5  # planning sees the same as the pipeline

    summary = _run(hostile_folder, tmp_path / "out")
    assert summary.reconciled
    scored = sorted(Path(row["uri"]).name for row in _rows(tmp_path / "out", "scores"))
    assert scored == ["0.png", "1.png", "2.png", "alias.png"]
    rejected = {
        Path(row["uri"]).name: (row["stage"], row["reason"], row["error"])
        for row in _rows(tmp_path / "out", "rejected")
    }
    assert {name: reason for name, (_, reason, _) in rejected.items()} == {
        "self": "unreadable",
        "up": "not_a_file",
        "broken.png": "unreadable",
        "pipe.png": "not_a_file",
        "caf\\xe9.png": "bad_name",
    }
    for name, (stage, _, error) in rejected.items():
        assert stage == "list"
        assert name in error  # each rejection names its item
    assert "not UTF-8" in rejected["caf\\xe9.png"][2]


def test_a_manifest_naming_a_fifo_rejects_it_instead_of_hanging(tmp_path: Path) -> None:
    write_image(tmp_path / "good.png", 1)
    os.mkfifo(tmp_path / "pipe.png")
    manifest = tmp_path / "m.jsonl"
    rows = [{"uri": name, "event_time": WHEN.isoformat()} for name in ("good.png", "pipe.png")]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = _run(manifest, tmp_path / "out")
    assert (summary.scored, dict(summary.rejected)) == (1, {"read/not_a_file": 1})


@pytest.mark.parametrize("value", [1e20, 10**22, "12345678901234567890123", -(10**22)])
def test_an_event_time_no_image_can_have_is_a_value_error_naming_it(value) -> None:
    with pytest.raises(ValueError, match="not a time any image can have"):
        parse_event_time(value)


def test_implausible_event_times_are_rejected_with_their_row_and_never_placed_in_a_window(tmp_path: Path) -> None:
    for index in range(2):
        write_image(tmp_path / f"{index}.png", index)
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()
    times = {"0.png": WHEN.isoformat(), "1.png": "1e20"}
    rows = [*times.items(), ("epoch0.png", 0), ("minus1.png", -1), ("huge.png", "12345678901234567890123"),
            ("future.png", future)]  # fmt: skip
    for name, _ in rows[2:]:
        (tmp_path / name).write_bytes((tmp_path / "0.png").read_bytes())
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["uri", "event_time"])
        writer.writerows(rows)
    summary = _run(manifest, tmp_path / "out")
    assert summary.reconciled
    assert summary.scored == 1
    assert summary.rejected == {
        "manifest/bad_event_time": 2,
        "read/implausible_event_time": 3,
    }
    rejected = {Path(row["uri"]).name: row for row in _rows(tmp_path / "out", "rejected")}
    assert all(row["window_start"] is None and row["event_time"] is None for row in rejected.values())
    assert "before 2000-01-01" in rejected["epoch0.png"]["error"]
    assert "ahead of now" in rejected["future.png"]["error"]
    windows = {row["window_start"] for row in _rows(tmp_path / "out", "windows")}
    assert windows == {utc("2026-11-26T13:00:00Z")}  # no 1970 window, no window in the future


def test_the_plausible_range_is_configurable(tmp_path: Path) -> None:
    write_image(tmp_path / "old.png", 1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,event_time\nold.png,1995-06-01T00:00:00Z\n")
    assert _run(manifest, tmp_path / "out").rejected == {"read/implausible_event_time": 1}
    archive = PlausibleTimes(earliest=utc("1990-01-01T00:00:00Z"))
    assert _run(manifest, tmp_path / "out", plausible=archive).scored == 1


def test_one_image_under_many_spellings_and_rows_is_scored_once_and_every_extra_row_accounted_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = tmp_path / "feed"
    for index in range(2):
        write_image(feed / f"{index}.png", index)
    manifest = feed / "m.csv"
    spellings = ["0.png", "./0.png", str(feed / "0.png"), f"file://{feed / 'sub' / '..' / '0.png'}", "1.png", "1.png"]
    manifest.write_text("uri,event_time\n" + "".join(f"{uri},{WHEN.isoformat()}\n" for uri in spellings))
    out = tmp_path / "out"
    first = _run(manifest, out)
    assert first.reconciled
    assert (first.scored, dict(first.rejected)) == (2, {"manifest/duplicate": 4})
    duplicate = next(row for row in _rows(out, "rejected") if row["reason"] == "duplicate")
    assert "row 1" in duplicate["error"]
    assert duplicate["uri"] == str(feed / "0.png")

    monkeypatch.chdir(tmp_path)  # the same manifest, spelled relative to another folder
    _run("feed/m.csv", out)
    _run(f"{feed}/../feed/m.csv", out)
    scores = _rows(out, "scores")
    assert sorted(row["uri"] for row in scores) == [str(feed / "0.png"), str(feed / "1.png")]
    assert open_source("feed/m.csv").key == open_source(str(manifest)).key


def test_rejections_name_the_image_as_its_scores_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed = tmp_path / "feed"
    write_image(feed / "good.png", 1)
    (feed / "m.csv").write_text(f"uri,event_time\ngood.png,{WHEN.isoformat()}\nmissing.png,{WHEN.isoformat()}\n"
                                "late.png,not-a-time\n")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    _run("feed/m.csv", tmp_path / "out")
    uris = sorted(row["uri"] for table in ("scores", "rejected") for row in _rows(tmp_path / "out", table))
    assert uris == [str(feed / "good.png"), str(feed / "late.png"), str(feed / "missing.png")]


def test_a_manifest_without_a_uri_column_is_refused_before_anything_runs(tmp_path: Path) -> None:
    for name, text in {"m.csv": "path,event_time\na.png,0\n", "m.jsonl": '{"path": "a.png"}\n'}.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SourceError, match=r"no uri column.*path"):
            open_source(str(tmp_path / name)).check()
    (tmp_path / "header.csv").write_text("uri,event_time\n")  # a manifest with no rows yet is a valid, empty one
    open_source(str(tmp_path / "header.csv")).check()


def test_a_window_re_run_with_every_image_now_rejected_keeps_no_stale_scores(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    for index in range(3):
        write_image(feed / f"{index}.png", index, mtime=WHEN)
    out = tmp_path / "out"
    assert _run(feed, out).scored == 3
    for index in range(3):
        (feed / f"{index}.png").write_bytes(b"broken now")
        os.utime(feed / f"{index}.png", (WHEN.timestamp(), WHEN.timestamp()))
    summary = _run(feed, out)
    assert (summary.scored, summary.rejected.total()) == (0, 3)
    assert _rows(out, "scores") == []
    assert {(row["n"], row["n_rejected"]) for row in _rows(out, "windows")} == {(0, 3)}

    for index in range(3):  # and back: the rejections of the run before go too
        write_image(feed / f"{index}.png", index, mtime=WHEN)
    _run(feed, out)
    assert (len(_rows(out, "scores")), _rows(out, "rejected")) == (3, [])


class _Images(http.server.BaseHTTPRequestHandler):
    """Serves one image at any path but /missing.png (404), /busy.png (503) and /forbidden.png (403)."""

    image = b""

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        status = {"/missing.png": 404, "/busy.png": 503, "/forbidden.png": 403}.get(self.path, 200)
        data = self.image if status == 200 else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    _Images.image = write_image(tmp_path / "served.png", 5).read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read(uri: str) -> list:
    return list(ReadImage(max_bytes=1 << 20).process(ImageRef(uri, WHEN)))


def test_transient_read_failures_fail_the_bundle_and_only_permanent_ones_are_rejections(image_server: str) -> None:
    with pytest.raises(TransientReadError, match=r"retried.*Connect"):
        _read(f"http://127.0.0.1:{_closed_port()}/image.png")  # the host refuses the connection
    with pytest.raises(TransientReadError, match="503"):
        _read(f"http://{image_server}/busy.png")
    [missing] = _read(f"http://{image_server}/missing.png")
    assert (missing.value.stage, missing.value.reason) == ("read", "not_found")
    [image] = _read(f"http://{image_server}/fine.png")
    assert image.data == _Images.image


def test_credentials_in_image_uris_are_used_to_read_and_never_stored(image_server: str, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [f"http://viewer:{PASSWORD}@{image_server}/{name}.png" for name in ("cam-1", "missing")]
    manifest.write_text("".join(json.dumps({"uri": uri, "event_time": WHEN.isoformat()}) + "\n" for uri in rows))
    summary = _run(manifest, tmp_path / "out")
    assert (summary.scored, dict(summary.rejected)) == (1, {"read/not_found": 1})
    stored = Counter(row["uri"] for table in ("scores", "rejected") for row in _rows(tmp_path / "out", table))
    assert stored == {f"http://{image_server}/cam-1.png": 1, f"http://{image_server}/missing.png": 1}
    assert PASSWORD.encode() not in _all_output_bytes(tmp_path / "out")


def test_a_rejected_row_of_another_window_leaves_that_windows_tables_alone(tmp_path: Path) -> None:
    first, second = utc("2026-11-26T13:20:00Z"), utc("2026-11-26T14:20:00Z")
    for index in range(2):
        write_image(tmp_path / f"{index}.png", index)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,event_time\n0.png,{first.isoformat()}\n1.png,{second.isoformat()}\n"
                        f"1.png,{second.isoformat()}\n")  # fmt: skip
    out = tmp_path / "out"
    _run(manifest, out)
    only_first = _run(manifest, out, since=utc("2026-11-26T13:00:00Z"), until=utc("2026-11-26T14:00:00Z"))
    assert only_first.reconciled
    assert (only_first.scored, only_first.rejected.total()) == (1, 0)  # the duplicate is the 14:00 window's
    assert sorted(Path(row["uri"]).name for row in _rows(out, "scores")) == ["0.png", "1.png"]
    assert [row["reason"] for row in _rows(out, "rejected")] == ["duplicate"]


def test_a_manifest_row_that_is_not_utf8_is_rejected_by_name_and_the_others_go_on(tmp_path: Path) -> None:
    write_image(tmp_path / "good.png", 1)
    (tmp_path / "m.csv").write_bytes(f"uri,event_time\ngood.png,{WHEN.isoformat()}\ncaf\xe9.png,{WHEN.isoformat()}\n"
                                     .encode("latin-1"))  # fmt: skip
    summary = _run(tmp_path / "m.csv", tmp_path / "out")
    assert (summary.scored, dict(summary.rejected)) == (1, {"manifest/bad_name": 1})
    [rejected] = _rows(tmp_path / "out", "rejected")
    assert rejected["uri"].endswith("caf\\xe9.png")


def test_a_json_lines_manifest_whose_first_row_lacks_a_uri_is_one_rejection_not_a_refusal(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 1)
    _manifest = tmp_path / "m.jsonl"
    _manifest.write_text(
        json.dumps({"segment": "x"}) + "\n" + json.dumps({"uri": "a.png", "event_time": WHEN.isoformat()}) + "\n"
    )
    open_source(str(_manifest)).check()
    summary = _run(_manifest, tmp_path / "out")
    assert (summary.scored, dict(summary.rejected)) == (1, {"manifest/missing_uri": 1})


def test_a_forbidden_url_is_a_rejection_not_a_retry_forever(image_server: str) -> None:
    [forbidden] = _read(f"http://{image_server}/forbidden.png")
    assert (forbidden.value.reason, "HTTP 403" in forbidden.value.error) == ("unreadable", True)


def test_planning_never_drops_an_image_whose_read_failed_for_a_reason_a_retry_cures(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"  # no event_time: planning asks the server for each image's time
    manifest.write_text(json.dumps({"uri": f"http://127.0.0.1:{_closed_port()}/a.png"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"a\.png"):  # fsspec's "not found", raised: the run fails and retries
        list(open_source(str(manifest)).list())


def test_redaction_keeps_no_part_of_a_password_nor_a_signed_urls_signature() -> None:
    assert redact("https://u:p@ss@host/x") == "https://host/x"  # a password with an "@" in it
    assert redact("https://host?mail=a@b.io") == "https://host?mail=a@b.io"  # an "@" past the authority stays
    signed = "https://b.s3.amazonaws.com/a.jpg?X-Amz-Credential=AKIA/x&X-Amz-Signature=abc123&X-Amz-Expires=60"
    assert (
        redact(signed) == "https://b.s3.amazonaws.com/a.jpg?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"
    )
    assert redact("https://acct.blob.core.windows.net/c/a.jpg?sv=2022&sig=Zm9v%3D") == (
        "https://acct.blob.core.windows.net/c/a.jpg?sv=2022&sig=***"
    )


def test_log_redaction_covers_tracebacks_and_never_breaks_the_code_that_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redact_logs()
    log = logging.getLogger("gradwatch.test")
    with caplog.at_level(logging.INFO):
        try:
            raise FileNotFoundError(f"https://u:{PASSWORD}@host/x.png")
        except FileNotFoundError:
            log.exception("fetching failed")
    assert "fetching failed" in caplog.text
    assert PASSWORD not in caplog.text
    quiet = logging.getLogger("gradwatch.test.unhandled")
    quiet.propagate, quiet.level = False, logging.INFO
    quiet.info("%(a)s", {"b": 1})  # a format its arguments do not fit: logging's own problem, never the caller's


def test_a_run_replaces_what_an_earlier_version_wrote_under_the_sources_spelling_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(2):
        write_image(tmp_path / "feed" / f"{index}.png", index, mtime=WHEN)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _run("feed", out)
    former = hashlib.sha256(b"feed").hexdigest()[:16]  # how gradwatch 0.1 keyed SOURCE "feed"
    for path in out.rglob("part-*.parquet"):
        path.rename(path.with_name(f"part-{former}.parquet"))
    _run("feed", out)
    assert len(_rows(out, "scores")) == 2
    assert not list(out.rglob(f"part-{former}.parquet"))
