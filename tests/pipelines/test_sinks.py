"""WriteTables through real pipelines: rows reach their partitions by staged shards, never grouped themselves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipelines import sinks
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.records import REJECTED, REJECTED_SCHEMA, WINDOWS_SCHEMA
from pipelines.sinks import WriteTables, ordered
from pipelines.store import OutputStore
from pipelines.times import parse_window_label
from pipelines.windows import WindowStatistics
from scoring import ScoringSettings
from tests.pipelines.conftest import TINY, write_image

SCORES_SCHEMA = pa.schema([("uri", pa.string()), ("segment", pa.string()), ("value", pa.float64())])
LABELS = ("2026-11-26T13-00-00Z", "2026-11-26T14-00-00Z")


def _tables(rows_per_label: int) -> dict[str, list]:
    # Interleaved, as two windows in flight at once arrive: a shard then holds some of each.
    scores = [
        (label, {"uri": f"img-{index:03d}-{label}", "segment": f"cam-{index % 3}", "value": float(index)})
        for index in reversed(range(rows_per_label))
        for label in LABELS
    ]
    rejected = [(LABELS[0], {"uri": "bad.png", "segment": None, "stage": "decode", "reason": "empty", "error": "e"})]
    return {"scores": scores, REJECTED: rejected}


def _write(out: Path, tables: dict[str, list], *, staging: str = "run") -> None:
    schemas = {"scores": SCORES_SCHEMA, "windows": WINDOWS_SCHEMA, REJECTED: REJECTED_SCHEMA}
    statistics = WindowStatistics(window=dt.timedelta(hours=1), columns=("value",), model_id="m@1")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        collections = {name: pipeline | f"Create{name}" >> beam.Create(rows) for name, rows in tables.items()}
        written = collections | WriteTables(
            OutputStore(str(out)), schemas=schemas, part="feed", staging=staging, derived={"windows": statistics}
        )
        assert_that(written, equal_to(sorted({label for rows in tables.values() for label, _ in rows} - {"unknown"})))


def _windows(out: Path, label: str) -> list[dict]:
    return pq.read_table(out / "windows" / f"window_start={label}" / "part-feed.parquet").to_pylist()


def _bytes(out: Path) -> dict[str, bytes]:
    tables = [out / table for table in ("scores", "windows", REJECTED)]
    return {str(path.relative_to(out)): path.read_bytes() for table in tables for path in sorted(table.rglob("*"))
            if path.is_file()}  # fmt: skip


def test_rows_are_staged_in_shards_of_bounded_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "SHARD_ROWS", 7)
    _write(tmp_path / "out", _tables(rows_per_label=20))
    shards = sorted((tmp_path / "out" / "_staging" / "run" / "scores").rglob("*.parquet"))
    sizes = [pq.read_metadata(shard).num_rows for shard in shards]
    assert sum(sizes) == 40
    assert len(shards) > 2
    assert max(sizes) <= 7  # no worker held more rows than the cap
    for label in LABELS:
        rows = pq.read_table(tmp_path / "out" / "scores" / f"window_start={label}" / "part-feed.parquet").to_pylist()
        assert len(rows) == 20
        assert {row["uri"][-len(label) :] for row in rows} == {label}
        assert rows == sorted(rows, key=lambda row: (row["segment"], row["uri"]))


def test_outputs_are_the_same_bytes_however_rows_were_sharded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "whole", _tables(rows_per_label=20))
    monkeypatch.setattr(sinks, "SHARD_ROWS", 3)
    _write(tmp_path / "sharded", _tables(rows_per_label=20))
    whole, sharded = _bytes(tmp_path / "whole"), _bytes(tmp_path / "sharded")
    assert len(whole) == 2 * 3 + 1  # both windows in every table, and rejections of unknown time
    assert sharded == whole


def test_a_touched_window_without_rows_gets_an_empty_partition(tmp_path: Path) -> None:
    tables = _tables(rows_per_label=2)
    tables[REJECTED] = []
    _write(tmp_path / "out", tables)
    for label in (*LABELS, "unknown"):
        path = tmp_path / "out" / REJECTED / f"window_start={label}" / "part-feed.parquet"
        assert pq.read_table(path).schema == REJECTED_SCHEMA
        assert pq.read_metadata(path).num_rows == 0


def test_the_windows_table_is_computed_from_each_windows_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "SHARD_ROWS", 7)  # a window's statistics span shards from several bundles
    _write(tmp_path / "out", _tables(rows_per_label=20))
    for label in LABELS:
        rows = {row["segment"]: row for row in _windows(tmp_path / "out", label)}
        assert rows["cam-0"]["window_end"] == parse_window_label(label) + dt.timedelta(hours=1)
        assert {segment: row["n"] for segment, row in rows.items() if row["n"]} == {"cam-0": 7, "cam-1": 7, "cam-2": 6}
        assert rows["cam-1"]["mean"] == np.mean([index for index in range(20) if index % 3 == 1])
        assert rows["cam-2"]["max"] == 17.0
    rejected_only = _windows(tmp_path / "out", LABELS[0])[0]  # the rejection has no segment, which sorts first
    assert (rejected_only["segment"], rejected_only["n"], rejected_only["n_rejected"]) == (None, 0, 1)
    assert all(row["segment"] is not None for row in _windows(tmp_path / "out", LABELS[1]))


def test_a_window_of_only_rejections_gets_its_statistics_and_an_empty_scores_file(tmp_path: Path) -> None:
    tables = {"scores": [], REJECTED: _tables(rows_per_label=1)[REJECTED]}
    _write(tmp_path / "out", tables)
    assert [(row["segment"], row["n"], row["n_rejected"]) for row in _windows(tmp_path / "out", LABELS[0])] == [
        (None, 0, 1)
    ]
    scores = tmp_path / "out" / "scores" / f"window_start={LABELS[0]}" / "part-feed.parquet"
    assert pq.read_metadata(scores).num_rows == 0


def test_rows_are_ordered_with_missing_segments_first() -> None:
    rows = pa.Table.from_pylist(
        [
            {"uri": "b", "segment": "cam-1", "value": 1.0},
            {"uri": "a", "segment": None, "value": 2.0},
            {"uri": "a", "segment": "cam-1", "value": 3.0},
        ],
        schema=SCORES_SCHEMA,
    )
    assert ordered(rows).column("value").to_pylist() == [2.0, 3.0, 1.0]


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    when = dt.datetime(2026, 11, 26, 13, 20, tzinfo=dt.UTC)
    for index in range(3):
        write_image(tmp_path / "feed" / f"{index}.png", index, mtime=when)
    return tmp_path / "feed"


def _score(feed: Path, out: Path) -> None:
    run_scoring(ScoringConfig(source=str(feed), out=str(out), scoring=ScoringSettings(model=TINY)))


def test_a_run_leaves_no_staged_shards(feed: Path, tmp_path: Path) -> None:
    _score(feed, tmp_path / "out")
    assert OutputStore(str(tmp_path / "out")).read_table("scores").num_rows == 3
    assert not (tmp_path / "out" / "_staging").exists()


def test_staging_another_run_is_still_using_is_kept(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    for run in ("first", "second"):
        store.write_staged(run, "scores", LABELS[0], "shard", pa.table({"value": [1.0]}))
    store.remove_staging("first")
    assert [path.name for path in (tmp_path / "out" / "_staging").iterdir()] == ["second"]
    store.remove_staging("second")
    assert not (tmp_path / "out" / "_staging").exists()


def test_a_failed_run_leaves_no_staged_shards(feed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staged_when_failing = []

    def fail(self, element):
        staged_when_failing.extend((tmp_path / "out" / "_staging").rglob("*.parquet"))
        raise OSError("the disk is full")

    monkeypatch.setattr(sinks.WritePartition, "process", fail)
    with pytest.raises(Exception, match="the disk is full"):
        _score(feed, tmp_path / "out")
    assert staged_when_failing  # the shards were written before the partitions failed
    assert not (tmp_path / "out" / "_staging").exists()
