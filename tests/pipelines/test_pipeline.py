"""Real pipelines on the embedded FnApiRunner and on two local worker processes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.pipeline import RunSummary, ScoringConfig, count_progress, run_scoring
from pipelines.settings import PipelineSettings
from pipelines.store import OutputStore
from scoring import ScoringSettings, load_scorer
from tests.pipelines.conftest import TINY, utc, write_image
from tests.scoring.test_decoding import needs_torchvision


def _run(source: Path | str, out: Path, *, workers: int = 1, **scoring) -> RunSummary:
    return run_scoring(
        ScoringConfig(
            source=str(source),
            out=str(out),
            scoring=ScoringSettings(model=TINY, **scoring),
            pipeline=PipelineSettings(workers=workers),
        )
    )


def _run_in_range(source: Path, out: Path, since, until) -> RunSummary:
    return run_scoring(
        ScoringConfig(source=str(source), out=str(out), since=since, until=until, scoring=ScoringSettings(model=TINY))
    )


def _rows(out: Path, table: str, *columns: str) -> list[tuple]:
    rows = OutputStore(str(out)).read_table(table).to_pylist()
    return sorted(tuple(row[column] for column in columns) for row in rows)


def test_every_listed_image_is_scored_or_rejected(odd_folder: Path, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    progress.mkdir()
    config = ScoringConfig(
        source=str(odd_folder),
        out=str(tmp_path / "out"),
        scoring=ScoringSettings(model=TINY),
        progress_dir=str(progress),
    )
    summary = run_scoring(config)
    assert count_progress(str(progress)) == summary.listed
    assert (summary.listed, summary.scored) == (11, 8)
    assert summary.rejected == {"decode/empty": 1, "decode/truncated": 1, "decode/not_an_image": 1}
    assert summary.reconciled
    assert summary.windows == 1
    scores, rejected = (
        OutputStore(str(tmp_path / "out")).read_table("scores"),
        OutputStore(str(tmp_path / "out")).read_table("rejected"),
    )
    assert scores.num_rows + rejected.num_rows == summary.listed
    assert not any(".hidden" in uri for uri in scores.column("uri").to_pylist())
    reasons = {Path(row["uri"]).name: (row["stage"], row["reason"]) for row in rejected.to_pylist()}
    assert reasons == {
        "empty.jpg": ("decode", "empty"),
        "truncated.png": ("decode", "truncated"),
        "notes.txt": ("decode", "not_an_image"),
    }
    assert all(row["uri"] in row["error"] and "Fix:" in row["error"] for row in rejected.to_pylist())


def test_scores_equal_the_scorer_called_directly(odd_folder: Path, tmp_path: Path) -> None:
    _run(odd_folder, tmp_path / "out")
    scorer = load_scorer(TINY, device="cpu")
    rows = OutputStore(str(tmp_path / "out")).read_table("scores").to_pylist()
    direct = scorer.score(torch.stack([scorer.preprocess(row["uri"]) for row in rows]))
    for name in (*scorer.score_names, "pred"):
        np.testing.assert_allclose([row[name] for row in rows], direct[name], rtol=1e-6, err_msg=name)
    assert {row["model_id"] for row in rows} == {scorer.model_id}
    first = rows[0]
    assert first["image_id"] == hashlib.sha256(Path(first["uri"]).read_bytes()).hexdigest()


def _manifest_images(tmp_path: Path) -> list[dict]:
    times = ["2026-11-26T12:59:59.999999Z", "2026-11-26T13:00:00Z", "2026-11-26T13:59:59Z", "2026-11-26T14:00:00Z"]
    entries = []
    for index, when in enumerate(times):
        path = write_image(tmp_path / "images" / f"img-{index}.png", index)
        entries.append({"uri": str(path), "event_time": when, "segment": f"cam-{index % 2}"})
    return entries


def test_windows_at_their_boundaries(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as file:
        writer = csv.DictWriter(file, ["uri", "event_time", "segment"])
        writer.writeheader()
        writer.writerows(_manifest_images(tmp_path))
    summary = _run(manifest, tmp_path / "out")
    assert summary.windows == 3
    by_window = _rows(tmp_path / "out", "scores", "window_start", "uri")
    assert [(start.hour, Path(uri).name) for start, uri in by_window] == [
        (12, "img-0.png"),
        (13, "img-1.png"),
        (13, "img-2.png"),
        (14, "img-3.png"),
    ]
    windows = OutputStore(str(tmp_path / "out")).read_table("windows").to_pylist()
    gradnorm = sorted(
        (row["window_start"].hour, row["segment"], row["n"]) for row in windows if row["score"] == "gradnorm"
    )
    assert gradnorm == [(12, "cam-0", 1), (13, "cam-0", 1), (13, "cam-1", 1), (14, "cam-1", 1)]
    assert {row["window_end"] - row["window_start"] for row in windows} == {
        utc("2026-01-01T01:00:00Z") - utc("2026-01-01T00:00:00Z")
    }
    partitions = sorted(path.name for path in (tmp_path / "out" / "scores").iterdir())
    assert partitions == [
        "window_start=2026-11-26T12-00-00Z",
        "window_start=2026-11-26T13-00-00Z",
        "window_start=2026-11-26T14-00-00Z",
    ]


def test_segments_get_their_own_statistics_and_rejections(tmp_path: Path) -> None:
    entries = [
        {
            "uri": str(write_image(tmp_path / f"a{index}.png", index)),
            "event_time": "2026-11-26T13:10:00Z",
            "segment": "cam-a",
        }
        for index in range(3)
    ]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    entries.append({"uri": str(tmp_path / "broken.png"), "event_time": "2026-11-26T13:11:00Z", "segment": "cam-b"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    _run(manifest, tmp_path / "out")
    windows = OutputStore(str(tmp_path / "out")).read_table("windows").to_pylist()
    summary = {(row["segment"], row["score"]): (row["n"], row["n_rejected"]) for row in windows}
    assert summary[("cam-a", "gradnorm")] == (3, 0)
    assert summary[("cam-b", "gradnorm")] == (0, 1)
    assert np.isnan([row["mean"] for row in windows if row["segment"] == "cam-b"]).all()
    scores = OutputStore(str(tmp_path / "out")).read_table("scores").to_pylist()
    cam_a = sorted(row["gradnorm"] for row in scores)
    stats = next(row for row in windows if (row["segment"], row["score"]) == ("cam-a", "gradnorm"))
    assert stats["mean"] == pytest.approx(np.mean(cam_a))
    assert stats["std"] == pytest.approx(np.std(cam_a, ddof=1))
    assert (stats["min"], stats["p50"], stats["max"]) == (cam_a[0], cam_a[1], cam_a[2])


@pytest.mark.parametrize("form", ["csv", "parquet", "jsonl"])
def test_manifest_forms_and_their_bad_rows(form: str, tmp_path: Path) -> None:
    good = [str(write_image(tmp_path / f"g{index}.png", index)) for index in range(3)]
    rows = [
        {"uri": good[0], "event_time": "2026-11-26T13:05:00+02:00", "segment": "x"},  # 11:05 UTC
        {"uri": good[1], "event_time": "1795698000", "segment": "x"},  # epoch seconds: 13:00 UTC
        {"uri": "g2.png", "event_time": "1795698000000", "segment": "x"},  # epoch ms, relative to the manifest
        {"uri": "", "event_time": "2026-11-26T13:05:00Z", "segment": "x"},
        {"uri": good[0], "event_time": "yesterday", "segment": "x"},
        {"uri": good[1], "event_time": "", "segment": "x"},
        {"uri": str(tmp_path / "missing.png"), "event_time": "2026-11-26T13:06:00Z", "segment": "x"},
    ]
    manifest = tmp_path / f"manifest.{form}"
    if form == "csv":
        with manifest.open("w", newline="") as file:
            writer = csv.DictWriter(file, ["uri", "event_time", "segment"])
            writer.writeheader()
            writer.writerows(rows)
    elif form == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    else:
        manifest.write_text("".join(json.dumps(row) + "\n" for row in rows) + "[1, 2]\n")
    summary = _run(manifest, tmp_path / "out")
    manifest_rejections = {"manifest/missing_uri": 1, "manifest/bad_event_time": 2}
    if form == "jsonl":
        manifest_rejections["manifest/bad_row"] = 1
    assert summary.rejected == {**manifest_rejections, "read/not_found": 1}
    assert summary.scored == 3
    assert summary.reconciled
    times = _rows(tmp_path / "out", "scores", "event_time")
    assert [when for (when,) in times] == [
        utc("2026-11-26T11:05:00Z"),
        utc("2026-11-26T13:00:00Z"),
        utc("2026-11-26T13:00:00Z"),
    ]
    unknown = [
        row
        for row in OutputStore(str(tmp_path / "out")).read_table("rejected").to_pylist()
        if row["window_start"] is None
    ]
    assert len(unknown) == sum(manifest_rejections.values())


def test_manifest_without_event_time_uses_file_times(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", 1, mtime=utc("2026-11-26T09:30:00Z"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"uri,segment\n{path},door\n")
    _run(manifest, tmp_path / "out")
    assert _rows(tmp_path / "out", "scores", "event_time", "segment") == [(utc("2026-11-26T09:30:00Z"), "door")]


def test_since_until_select_whole_windows(tmp_path: Path) -> None:
    for index, when in enumerate(
        ["2026-11-26T11:59:00Z", "2026-11-26T12:10:00Z", "2026-11-26T13:50:00Z", "2026-11-26T14:00:00Z"]
    ):
        write_image(tmp_path / "feed" / f"{index}.png", index, mtime=utc(when))
    summary = _run_in_range(
        tmp_path / "feed", tmp_path / "out", since=utc("2026-11-26T12:30:00Z"), until=utc("2026-11-26T13:10:00Z")
    )
    assert (summary.since, summary.until) == (utc("2026-11-26T12:00:00Z"), utc("2026-11-26T14:00:00Z"))
    assert summary.listed == 2
    assert sorted(Path(uri).name for (uri,) in _rows(tmp_path / "out", "scores", "uri")) == ["1.png", "2.png"]


def _assert_same_outputs(actual: Path, expected: Path) -> None:
    """Same rows in every table; scores may differ in float rounding, since batch groupings and thread
    counts change the order of a convolution's sums."""
    identity = ("window_start", "uri", "image_id", "event_time", "segment", "model_id", "pred")
    assert _rows(actual, "scores", *identity) == _rows(expected, "scores", *identity)
    for name in ("gradnorm", "energy", "msp"):
        np.testing.assert_allclose(
            [value for _, value in _rows(actual, "scores", "uri", name)],
            [value for _, value in _rows(expected, "scores", "uri", name)],
            rtol=1e-5,
        )
    rejected = ("window_start", "uri", "event_time", "stage", "reason", "error")
    assert _rows(actual, "rejected", *rejected) == _rows(expected, "rejected", *rejected)
    counts = ("window_start", "window_end", "segment", "score", "n", "n_rejected", "model_id")
    assert _rows(actual, "windows", *counts) == _rows(expected, "windows", *counts)


def test_rerun_is_idempotent_and_repairs_a_killed_run(odd_folder: Path, tmp_path: Path) -> None:
    out, reference = tmp_path / "out", tmp_path / "reference"
    _run(odd_folder, reference)
    _run(odd_folder, out)
    _run(odd_folder, out)
    _assert_same_outputs(out, reference)
    assert len(list((out / "scores").rglob("*.parquet"))) == 1

    # A killed run: one window file never written, another's temporary never renamed.
    for file in next((out / "windows").iterdir()).iterdir():
        file.unlink()
    scores_partition = next((out / "scores").iterdir())
    stale = scores_partition / f".{next(scores_partition.iterdir()).name}.0123abcd.tmp"
    stale.write_bytes(b"half a parquet file")
    killed_at = time.time() - 3600
    os.utime(stale, (killed_at, killed_at))
    # And a writer of this moment, mid-write: its temporary is not a leftover.
    writing = scores_partition / f".{next(scores_partition.iterdir()).name}.4567cdef.tmp"
    writing.write_bytes(b"being written")
    assert ds.dataset(out / "scores", partitioning="hive").count_rows() == 8

    _run(odd_folder, out)
    _assert_same_outputs(out, reference)
    assert not stale.exists()
    assert writing.exists()


def test_two_local_worker_processes_give_the_same_outputs(odd_folder: Path, tmp_path: Path) -> None:
    _run(odd_folder, tmp_path / "single")
    summary = _run(odd_folder, tmp_path / "multi", workers=2)
    assert summary.reconciled
    assert summary.scored == 8
    _assert_same_outputs(tmp_path / "multi", tmp_path / "single")


def test_outputs_read_with_pyarrow_hive_and_duckdb(odd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(odd_folder, out)
    dataset = ds.dataset(out / "scores", partitioning="hive")
    assert dataset.count_rows() == 8
    assert "window_start" in dataset.schema.names
    query = f"""
        select window_start, count(*) as n, avg(gradnorm) as mean_gradnorm
        from read_parquet('{out}/scores/*/*.parquet', hive_partitioning = true) group by window_start
    """
    assert duckdb.sql(query).fetchall()[0][:2] == ("2026-11-26T13-00-00Z", 8)


def test_bf16_precision_runs_through_the_pipeline(odd_folder: Path, tmp_path: Path) -> None:
    _run(odd_folder, tmp_path / "fp32")
    _run(odd_folder, tmp_path / "bf16", precision="bf16")
    exact = dict(_rows(tmp_path / "fp32", "scores", "uri", "energy"))
    fast = dict(_rows(tmp_path / "bf16", "scores", "uri", "energy"))
    assert exact.keys() == fast.keys()
    relative = [abs(fast[uri] - exact[uri]) / abs(exact[uri]) for uri in exact]
    assert 0 < max(relative) < 5e-2  # bf16 really ran (scores moved), and only by its rounding


def test_compiled_fp16_model_runs_through_the_pipeline(odd_folder: Path, tmp_path: Path) -> None:
    _run(odd_folder, tmp_path / "fp32")
    summary = _run(odd_folder, tmp_path / "fast", precision="fp16", compile=True)
    assert (summary.scored, summary.rejected.total()) == (8, 3)
    exact = dict(_rows(tmp_path / "fp32", "scores", "uri", "gradnorm"))
    fast = dict(_rows(tmp_path / "fast", "scores", "uri", "gradnorm"))
    assert exact.keys() == fast.keys()
    relative = [abs(fast[uri] - exact[uri]) / abs(exact[uri]) for uri in exact]
    assert 0 < max(relative) < 5e-3


@needs_torchvision
def test_device_decoding_scores_and_rejects_as_host_decoding(odd_folder: Path, tmp_path: Path) -> None:
    host = _run(odd_folder, tmp_path / "host")
    device = _run(odd_folder, tmp_path / "device", decoder="device")
    assert (device.scored, device.rejected) == (host.scored, host.rejected)
    assert _rows(tmp_path / "device", "rejected", "uri", "reason") == _rows(
        tmp_path / "host", "rejected", "uri", "reason"
    )
    by_host = dict(_rows(tmp_path / "host", "scores", "uri", "gradnorm"))
    by_device = dict(_rows(tmp_path / "device", "scores", "uri", "gradnorm"))
    assert by_device.keys() == by_host.keys()
    for uri, value in by_host.items():
        assert by_device[uri] == pytest.approx(value, rel=1e-2), uri


def test_image_properties_go_into_the_scores_and_the_window_statistics(odd_folder: Path, tmp_path: Path) -> None:
    import math

    from pipelines.records import CORE_PROPERTY_COLUMNS

    _run(odd_folder, tmp_path / "out")
    scores = OutputStore(str(tmp_path / "out")).read_table("scores")
    assert set(CORE_PROPERTY_COLUMNS) <= set(scores.column_names)
    rows = scores.to_pylist()
    assert sorted(row["jpeg_quality"] for row in rows if row["uri"].endswith(".jpg")) == [75.0, 75.0, 75.0]
    assert all(math.isnan(row["jpeg_quality"]) for row in rows if row["uri"].endswith(".png"))
    assert {(row["width"], row["height"]) for row in rows} == {(64.0, 48.0)}
    windows = {row["score"]: row for row in OutputStore(str(tmp_path / "out")).read_table("windows").to_pylist()}
    assert (windows["brightness"]["n"], windows["jpeg_quality"]["n"]) == (8, 3)  # n counts the values that apply
    assert windows["jpeg_quality"]["mean"] == 75.0


def test_fitted_scores_and_projected_features_go_into_the_scores_table(odd_folder: Path, tmp_path: Path) -> None:
    from pipelines.records import table_values
    from scoring.features import FEATURES

    healthy = [write_image(tmp_path / "ref" / f"{index}.png", 100 + index).read_bytes() for index in range(30)]
    fitted = load_scorer(TINY, device="cpu").fit_scores(healthy, sources=[f"ref/{i}" for i in range(30)])
    assert {"vim", FEATURES} <= set(fitted)
    out = tmp_path / "out"
    config = ScoringConfig(
        source=str(odd_folder), out=str(out), scoring=ScoringSettings(model=TINY), fitted_scores=fitted
    )
    assert run_scoring(config).scored == 8
    scores = OutputStore(str(out)).read_table("scores")
    assert scores.schema.field(FEATURES).type == pa.list_(pa.float32())
    values = table_values(scores, ["vim", FEATURES])
    scorer = load_scorer(TINY, device="cpu", fitted_scores=fitted)
    direct = scorer.score(torch.stack([scorer.preprocess(uri) for uri in scores.column("uri").to_pylist()]))
    np.testing.assert_allclose(values["vim"], direct["vim"], rtol=1e-6)
    np.testing.assert_allclose(values[FEATURES], direct[FEATURES], rtol=1e-5, atol=1e-6)  # kept as float32
    assert values[FEATURES].shape == (8, len(fitted[FEATURES]["axes"]))
    windows = {row["score"] for row in OutputStore(str(out)).read_table("windows").to_pylist()}
    assert "vim" in windows
    assert FEATURES not in windows  # a vector has no quantiles: the MMD test reads the scores table
