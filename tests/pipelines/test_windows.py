"""Window statistics, durations and time parsing: pure logic, no pipeline."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest
from datasketches import kll_doubles_sketch

from pipelines.inference import ScorerModelHandler
from pipelines.records import QUANTILES, REJECTED_SCHEMA
from pipelines.times import align_to_windows, object_mtime, parse_event_time, parse_window, window_label
from pipelines.windows import ScoreStats, window_rows
from scoring import ModelSpecError, ScoringSettings
from tests.pipelines.conftest import TINY, utc


def test_moments_are_exact_and_sketches_merge_across_windows() -> None:
    values = np.random.default_rng(0).normal(5, 2, 1000)
    whole = ScoreStats.of(values)
    assert whole.n == 1000
    assert whole.mean == pytest.approx(values.mean(), rel=1e-12)
    assert whole.std == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (whole.min, whole.max) == (values.min(), values.max())
    merged = kll_doubles_sketch(200)
    for part in np.array_split(values, 7):  # as the report merges a day's windows
        merged.merge(kll_doubles_sketch.deserialize(ScoreStats.of(part).sketch.serialize()))
    assert merged.n == 1000
    assert merged.get_quantile(0.5) == pytest.approx(np.median(values), abs=0.05 * values.std())


def test_quantiles_are_exact_for_small_windows() -> None:
    values = np.random.default_rng(1).normal(size=150)
    expected = np.quantile(values, list(QUANTILES.values()), method="inverted_cdf")
    np.testing.assert_array_equal(list(ScoreStats.of(values).quantiles().values()), expected)


def _window(scored: list[dict], rejected_segments: list[str | None]) -> dict[tuple, dict]:
    scores = pa.Table.from_pylist(
        scored, schema=pa.schema([("segment", pa.string()), ("gradnorm", pa.float64()), ("jpeg_quality", pa.float64())])
    )
    rejected = pa.Table.from_pylist([{"segment": segment} for segment in rejected_segments], schema=REJECTED_SCHEMA)
    rows = window_rows(scores, rejected, ("gradnorm", "jpeg_quality"), utc("2026-11-26T14:00:00Z"), "m@1")
    return {(row["segment"], row["score"]): row for row in rows}


def test_window_rows_count_each_segments_images_and_rejections() -> None:
    rows = _window(
        [
            {"segment": "cam-a", "gradnorm": 2.0, "jpeg_quality": 90.0},
            {"segment": "cam-a", "gradnorm": 4.0, "jpeg_quality": math.nan},  # a PNG: no JPEG quality
            {"segment": None, "gradnorm": 1.0, "jpeg_quality": 80.0},
        ],
        ["cam-a", "cam-b", "cam-b"],
    )
    assert sorted(rows, key=str) == sorted(
        [(segment, score) for segment in ("cam-a", "cam-b", None) for score in ("gradnorm", "jpeg_quality")], key=str
    )
    gradnorm = rows[("cam-a", "gradnorm")]
    assert (gradnorm["n"], gradnorm["n_rejected"], gradnorm["mean"], gradnorm["std"]) == (2, 1, 3.0, math.sqrt(2))
    assert (gradnorm["min"], gradnorm["max"], gradnorm["p50"]) == (2.0, 4.0, 2.0)
    assert (rows[("cam-a", "jpeg_quality")]["n"], rows[("cam-a", "jpeg_quality")]["mean"]) == (1, 90.0)
    assert (rows[(None, "gradnorm")]["n"], rows[(None, "gradnorm")]["n_rejected"]) == (1, 0)
    sketch = kll_doubles_sketch.deserialize(gradnorm["sketch"])
    assert (sketch.n, sketch.get_min_value(), sketch.get_max_value()) == (2, 2.0, 4.0)

    only_rejected = rows[("cam-b", "gradnorm")]
    assert (only_rejected["n"], only_rejected["n_rejected"]) == (0, 2)
    assert np.isnan([only_rejected[name] for name in ("mean", "std", "min", "max", "p50")]).all()
    assert kll_doubles_sketch.deserialize(only_rejected["sketch"]).n == 0


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600), ("30m", 1800), ("15min", 900), ("1d", 86400), ("90s", 90), ("1h30m", 5400)]
)
def test_window_durations(text: str, seconds: int) -> None:
    assert parse_window(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "hourly", "7m", "0h", "1h-"])
def test_bad_window_durations(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_ranges_widen_to_whole_windows() -> None:
    hour = dt.timedelta(hours=1)
    assert align_to_windows(utc("2026-11-26T12:30:00Z"), utc("2026-11-26T13:10:00Z"), hour) == (
        utc("2026-11-26T12:00:00Z"),
        utc("2026-11-26T14:00:00Z"),
    )
    assert align_to_windows(None, utc("2026-11-26T13:00:00Z"), hour) == (None, utc("2026-11-26T13:00:00Z"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-26T13:05:00Z", "2026-11-26T13:05:00Z"),
        ("2026-11-26T14:05:00+01:00", "2026-11-26T13:05:00Z"),
        ("2026-11-26 13:05:00", "2026-11-26T13:05:00Z"),
        (1795698300, "2026-11-26T13:05:00Z"),
        ("1795698300.0", "2026-11-26T13:05:00Z"),
        (1795698300000, "2026-11-26T13:05:00Z"),
        (dt.datetime(2026, 11, 26, 13, 5), "2026-11-26T13:05:00Z"),
    ],
)
def test_event_times(value, expected: str) -> None:
    assert parse_event_time(value) == utc(expected)


@pytest.mark.parametrize("value", ["yesterday", "nan", "2026-13-01"])
def test_bad_event_times_name_the_value(value: str) -> None:
    with pytest.raises(ValueError, match="event_time"):
        parse_event_time(value)


def test_modification_times_from_any_filesystem() -> None:
    assert object_mtime({"mtime": 1795698300.0}) == utc("2026-11-26T13:05:00Z")
    assert object_mtime({"LastModified": utc("2026-11-26T13:05:00Z")}) == utc("2026-11-26T13:05:00Z")
    assert object_mtime({"updated": "2026-11-26T13:05:00Z"}) == utc("2026-11-26T13:05:00Z")


def test_window_labels_have_no_colons() -> None:
    assert window_label(utc("2026-11-26T13:00:00Z")) == "2026-11-26T13-00-00Z"
    assert window_label(None) == "unknown"


def test_worker_with_other_weights_refuses_to_score() -> None:
    handler = ScorerModelHandler(ScoringSettings(model=TINY, device="cpu"), expected_model_id="build@000000000000")
    with pytest.raises(ModelSpecError, match="deploy the same weights"):
        handler.load_model()
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 32}
