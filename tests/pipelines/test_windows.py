"""Window statistics, durations and time parsing: pure logic, no pipeline."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pytest
from datasketches import kll_doubles_sketch

from pipelines.inference import ScorerModelHandler
from pipelines.records import QUANTILES
from pipelines.times import align_to_windows, object_mtime, parse_event_time, parse_window, window_label
from pipelines.windows import ScoreStats, WindowStatsFn, window_rows
from scoring import ModelSpecError, ScoringSettings
from tests.pipelines.conftest import TINY, utc


def _stats(values) -> ScoreStats:
    stats = ScoreStats()
    for value in values:
        stats.add(float(value))
    return stats


def test_merged_partials_equal_one_pass() -> None:
    values = np.random.default_rng(0).normal(5, 2, 1000)
    whole = _stats(values)
    merged = ScoreStats()
    for part in np.array_split(values, 7):
        merged.merge(pickle.loads(pickle.dumps(_stats(part))))  # as Beam ships accumulators between workers
    assert merged.n == 1000
    assert merged.mean == pytest.approx(values.mean(), rel=1e-12)
    assert merged.std == pytest.approx(values.std(ddof=1), rel=1e-10)
    assert (merged.min, merged.max) == (values.min(), values.max())
    assert merged.quantiles()["p50"] == pytest.approx(np.median(values), abs=0.05 * values.std())
    assert (merged.mean, merged.std) == pytest.approx((whole.mean, whole.std), rel=1e-12)


def test_quantiles_are_exact_for_small_windows() -> None:
    values = np.random.default_rng(1).normal(size=150)
    expected = np.quantile(values, list(QUANTILES.values()), method="inverted_cdf")
    np.testing.assert_array_equal(list(_stats(values).quantiles().values()), expected)


def test_combine_fn_counts_rejections_and_keeps_empty_windows() -> None:
    combine = WindowStatsFn(("gradnorm", "msp"))
    first = combine.add_input(combine.create_accumulator(), {"gradnorm": 2.0, "msp": 0.5})
    second = combine.add_input(combine.create_accumulator(), None)
    second = combine.add_input(second, {"gradnorm": 4.0, "msp": 0.7})
    merged = combine.extract_output(combine.merge_accumulators([first, second]))
    rows = {row["score"]: row for row in window_rows("cam", merged, utc("2026-11-26T14:00:00Z"), "m@1")}
    assert (rows["gradnorm"]["n"], rows["gradnorm"]["n_rejected"], rows["gradnorm"]["mean"]) == (2, 1, 3.0)
    sketch = kll_doubles_sketch.deserialize(rows["msp"]["sketch"])
    assert (sketch.n, sketch.get_min_value(), sketch.get_max_value()) == (2, 0.5, 0.7)

    empty = combine.add_input(combine.create_accumulator(), None)
    row = next(window_rows("cam", empty, utc("2026-11-26T14:00:00Z"), "m@1"))
    assert (row["n"], row["n_rejected"]) == (0, 1)
    assert np.isnan([row["mean"], row["std"], row["min"], row["p50"]]).all()


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
