"""A manifest read row by row at the scale of a production feed: what each row becomes (a ref, or a rejection naming
the row and the fix), the same whatever its form, in bounded memory; and the refs spread over workers in batches."""

from __future__ import annotations

import csv
import datetime as dt
import json
import tracemalloc
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipelines.read import SpreadListed, packed_refs, unpacked_refs
from pipelines.records import ImageRef, Rejected
from pipelines.sources import open_source
from pipelines.sources.manifest import manifest_entries
from tests.pipelines.conftest import utc

WHEN = "2026-11-26T13:05:00Z"


def _entries(manifest: Path) -> list[ImageRef | Rejected]:
    return list(manifest_entries(str(manifest)))


def test_csv_rows_read_as_a_dict_reader_reads_them(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "segment,uri,event_time,uri\n"  # a column named twice: the last one is the uri
        f"x,ignored.png,{WHEN},a.png\n"
        "\n"  # a blank line is no row: the next is row 2
        f"y,ignored.png,{WHEN}\n"  # short: no uri
        "z,ignored.png\n"  # shorter: no event_time either, an empty one
        f'w,,{WHEN},"quoted,\nnewline.png",extra,fields\n'
    )
    first, short, shorter, quoted = _entries(manifest)
    assert first == ImageRef(str(tmp_path / "a.png"), utc(WHEN), "x")
    assert (short.reason, short.segment) == ("missing_uri", "y")
    assert short.error == f"{manifest} row 2 has no uri; every manifest row needs one"
    assert shorter.reason == "missing_uri"  # the uri is checked first
    assert quoted == ImageRef(str(tmp_path / "quoted,\nnewline.png"), utc(WHEN), "w")


def test_a_row_with_an_event_time_column_but_no_value_names_its_row_and_the_fix(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,event_time\na.png,{WHEN}\nb.png\nc.png,1e20\n")
    _, empty, impossible = _entries(manifest)
    assert (empty.reason, empty.event_time) == ("bad_event_time", None)
    assert empty.error.startswith(f"{manifest} row 2 ({tmp_path / 'b.png'}): event_time is empty; fill it")
    assert (impossible.reason, "row 3" in impossible.error) == ("bad_event_time", True)


def test_every_spelling_of_a_path_is_one_image_and_a_second_one_a_duplicate(tmp_path: Path) -> None:
    spellings = [
        "a.png",
        f"{tmp_path}/a.png",
        f"{tmp_path}//a.png",
        f"{tmp_path}/./a.png",
        f"{tmp_path}/sub/../a.png",
        f"file://{tmp_path}/a.png",
        f"{tmp_path}/a.png/",
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,event_time\n" + "".join(f"{uri},{WHEN}\n" for uri in spellings))
    first, *others = _entries(manifest)
    assert first == ImageRef(str(tmp_path / "a.png"), utc(WHEN), "")
    assert [(other.reason, other.uri) for other in others] == [("duplicate", str(tmp_path / "a.png"))] * 6
    assert others[0].error == f"{manifest} row 2 names {str(tmp_path / 'a.png')!r} again (row 1); drop the row"


def test_credentials_never_name_an_image_and_two_signatures_of_one_object_are_one_image(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"uri": "https://u:secret@host/a.png?X-Amz-Signature=abc&k=1", "event_time": WHEN},
        {"uri": "https://host/a.png?X-Amz-Signature=def&k=1", "event_time": WHEN},
        {"uri": "https://u:secret@host/b.png", "event_time": "yesterday"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    read, again, bad = _entries(manifest)
    assert read.uri == rows[0]["uri"]  # the read itself needs them
    assert (again.reason, again.uri) == ("duplicate", "https://host/a.png?X-Amz-Signature=***&k=1")
    assert (bad.reason, bad.uri) == ("bad_event_time", "https://host/b.png")
    assert "secret" not in bad.error + again.error


def test_parquet_columns_of_any_type_and_missing_ones(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    times = pa.array([dt.datetime(2026, 11, 26, 13), None, dt.datetime(2026, 11, 26, 14)], pa.timestamp("us"))
    pq.write_table(pa.table({"uri": ["a.png", "b.png", None], "event_time": times}), manifest)
    a, b, none = _entries(manifest)
    assert a == ImageRef(str(tmp_path / "a.png"), utc("2026-11-26T13:00:00Z"), "")  # a naive time is UTC
    assert (b.reason, none.reason) == ("bad_event_time", "missing_uri")
    pq.write_table(pa.table({"uri": ["c.png"], "segment": pa.array([7], pa.int64())}), manifest)
    assert _entries(manifest) == [ImageRef(str(tmp_path / "c.png"), None, "7")]  # no event_time: the file's time


def test_json_lines_that_are_not_objects_are_rows_rejected_by_number(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'[1, 2]\n\n{{bad\n{{"uri": "a.png", "event_time": "{WHEN}", "segment": " s "}}\n')
    listed, not_json, valid = _entries(manifest)
    assert (listed.reason, listed.error) == (
        "bad_row",
        f"{manifest} row 1: a JSON list, not an object; write one JSON object per line",
    )
    assert (not_json.reason, "row 2: not JSON" in not_json.error) == ("bad_row", True)
    assert valid == ImageRef(str(tmp_path / "a.png"), utc(WHEN), "s")


def _write_feed_manifest(manifest: Path, rows: int) -> None:
    """A production-sized manifest: distinct images over folders and 50 segments, all at one time."""
    with manifest.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["uri", "event_time", "segment"])
        writer.writerows([f"/feed/{row // 1000}/{row}.jpg", WHEN, f"cam-{row % 50}"] for row in range(rows))


def test_a_manifest_of_many_rows_is_listed_in_bounded_memory(tmp_path: Path) -> None:
    """Streamed: what listing holds is its duplicate check, about 150 bytes a row, not the rows read."""
    manifest, rows = tmp_path / "m.csv", 100_000
    _write_feed_manifest(manifest, rows)
    tracemalloc.start()
    try:
        listed = sum(isinstance(entry, ImageRef) for entry in open_source(str(manifest)).list())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert listed == rows
    assert peak < 250 * rows  # the rows kept as refs would add over 400 bytes each


def test_the_bars_count_is_what_the_listing_gives_in_the_range(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "uri,event_time\n"
        f"a.png,{WHEN}\n"
        f"a.png,{WHEN}\n"  # a duplicate: a rejection of the same time
        "b.png,2026-11-26T15:00:00Z\n"  # after the range
        "c.png,yesterday\n"  # no usable time: counted, as the read step counts it
        ",2026-11-26T13:10:00Z\n"  # no uri, in the range
    )
    source = open_source(str(manifest))
    since, until = utc("2026-11-26T13:00:00Z"), utc("2026-11-26T14:00:00Z")
    listed = [entry for entry in source.list() if entry.event_time is None or since <= entry.event_time < until]
    assert source.count_listed(since, until) == len(listed) == 4
    assert source.count_listed(None, None) == 5


def test_the_bars_count_holds_nothing_per_row(tmp_path: Path) -> None:
    """The count runs beside the pipeline on the launcher: the duplicate check's 150 bytes a row would add to the
    launcher's peak what the listing already holds on a worker."""
    manifest, rows = tmp_path / "m.csv", 100_000
    _write_feed_manifest(manifest, rows)
    tracemalloc.start()
    try:
        counted = open_source(str(manifest)).count_listed(None, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counted == rows
    assert peak < 10 * rows


@pytest.mark.parametrize("count", [0, 1, 10, 3000])
def test_spread_refs_arrive_whole_and_once(count: int) -> None:
    refs = [ImageRef(f"/feed/{index}.jpg", utc(WHEN), "s") for index in range(count)]
    entries = [*refs, Rejected("/feed/x", None, "manifest", "duplicate", "x", "s")]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        spread = pipeline | beam.Create([None]) | beam.FlatMap(lambda _: entries) | SpreadListed()
        assert_that(spread, equal_to(entries))


def test_listed_refs_cross_the_shuffle_compressed() -> None:
    """The local runner's launcher holds several copies of what the listing shuffles: pickled alone, a million
    refs grew it 700 MB (bench/scale.py --parts plan)."""
    batch = [ImageRef(f"/data/feed/camera-{index % 50:02d}/{index:07d}.jpg", utc(WHEN), f"cam-{index % 50:02d}")
             for index in range(1024)]  # fmt: skip
    packed = packed_refs(batch)
    assert unpacked_refs(packed) == batch
    assert len(packed) < 30 * len(batch)
