"""Data-quality gates with Great Expectations: suites are code here, run in an ephemeral context.

Before scoring, a window's image metadata (read from headers, not decoded) is checked; after scoring, its
scores and statistics. A failed gate is an alert of kind ``data_quality`` listing the failed expectations;
it never drops the window silently.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

from pipelines.read import open_image_file
from pipelines.records import QUANTILES, ImageRef
from pipelines.sources import image_identity


@dataclass(frozen=True)
class GateLimits:
    """What a healthy window looks like. Defaults suit camera feeds of ordinary photographs."""

    # Below this share of images whose header parses, the feed itself is broken.
    min_decodable_share: float = 0.95
    # Thumbnails below 32 px carry nothing the model can use; above 20k px is a panorama or a scan.
    min_side: int = 32
    max_side: int = 20_000
    # Camera JPEGs weigh 20 kB to 20 MB; 1 kB is an error page, 100 MB a raw dump.
    min_bytes: int = 1_000
    max_bytes: int = 100_000_000
    # A feed replaying the same frame (a frozen camera) shows up as duplicate image ids.
    max_duplicate_share: float = 0.2
    # Images from the future mean a camera clock is wrong; this much skew is tolerated.
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class GateResult:
    """The outcome of one suite on one window."""

    suite: str
    success: bool
    failed: list[dict[str, Any]] = field(default_factory=list)  # expectation type, column, observed value

    def summary(self) -> str:
        return "; ".join(f"{f['expectation']}({f.get('column', '')}) observed {f['observed']}" for f in self.failed)


def image_metadata(refs: Sequence[ImageRef]) -> pd.DataFrame:
    """One row per image from its header: decodable, width, height, channels, bytes, event time."""
    rows = []
    for ref in refs:
        fs, path = fsspec.core.url_to_fs(ref.uri)
        row: dict[str, Any] = {"uri": image_identity(ref.uri), "event_time": ref.event_time, "decodable": 0}
        try:
            row["bytes"] = int(fs.size(path))
            with open_image_file(fs, path) as file, Image.open(file) as image:
                row.update(decodable=1, width=image.width, height=image.height, channels=len(image.getbands()))
        except Exception:  # any header that does not parse counts as not decodable; the pipeline says why
            row.setdefault("bytes", 0)
        rows.append(row)
    return pd.DataFrame(rows, columns=["uri", "event_time", "decodable", "bytes", "width", "height", "channels"])


class Gates:
    """The two suites, built once per process in an ephemeral GX context."""

    def __init__(self, limits: GateLimits | None = None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.limits = limits or GateLimits()
        self._gx = gx
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self._context.data_sources.add_pandas("gradwatch")
        self._metadata_batch = source.add_dataframe_asset("window_metadata").add_batch_definition_whole_dataframe("all")
        self._scores_batch = source.add_dataframe_asset("window_scores").add_batch_definition_whole_dataframe("all")

    def _suite(self, name: str, expectations: list) -> Any:
        suite = self._gx.ExpectationSuite(name=name)
        for expectation in expectations:
            suite.add_expectation(expectation)
        return suite

    def before_scoring(self, metadata: pd.DataFrame, window_start: dt.datetime, window_end: dt.datetime) -> GateResult:
        """Decodable share, side lengths, channels, file size, event time inside the window and not in the future."""
        limits, expect = self.limits, self._gx.expectations
        latest = min(window_end, dt.datetime.now(dt.UTC) + limits.clock_skew)
        frame = metadata.assign(
            event_epoch=[moment.timestamp() for moment in metadata["event_time"]],
            min_side=metadata[["width", "height"]].min(axis=1),
            max_side=metadata[["width", "height"]].max(axis=1),
        )
        decodable = frame[frame["decodable"] == 1]
        suite = self._suite(
            "window_metadata",
            [
                expect.ExpectColumnMeanToBeBetween(column="decodable", min_value=limits.min_decodable_share),
                expect.ExpectColumnValuesToBeBetween(column="event_epoch", min_value=window_start.timestamp(),
                                                     max_value=latest.timestamp(), strict_max=True),
                expect.ExpectColumnValuesToBeBetween(column="bytes", min_value=limits.min_bytes,
                                                     max_value=limits.max_bytes, mostly=limits.min_decodable_share),
            ],
        )  # fmt: skip
        results = [self._validate(self._metadata_batch, frame, suite)]
        if len(decodable):
            image_suite = self._suite(
                "decodable_images",
                [
                    expect.ExpectColumnValuesToBeBetween(column="min_side", min_value=limits.min_side),
                    expect.ExpectColumnValuesToBeBetween(column="max_side", max_value=limits.max_side),
                    expect.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 2, 3, 4]),
                ],
            )
            results.append(self._validate(self._metadata_batch, decodable, image_suite))
        return _merge("before_scoring", results)

    def after_scoring(
        self, scores: pd.DataFrame, windows: pd.DataFrame, *, names: Sequence[str], min_window: int
    ) -> GateResult:
        """n at least the minimum, the ``names`` scores finite, quantiles ordered, duplicate image share bounded."""
        expect = self._gx.expectations
        if scores.empty:  # nothing scored: every column still has to be there for the suite to run
            scores = pd.DataFrame({name: pd.Series(dtype=float) for name in names} | {"image_id": pd.Series(dtype=str)})
        frame = scores.assign(
            **{f"{name}_finite": np.isfinite(scores[name].to_numpy()).astype(int) for name in names},
            duplicate=scores["image_id"].duplicated().astype(int),
        )
        score_suite = self._suite(
            "window_scores",
            [
                expect.ExpectTableRowCountToBeBetween(min_value=min_window),
                *[expect.ExpectColumnMinToBeBetween(column=f"{name}_finite", min_value=1) for name in names],
                expect.ExpectColumnMeanToBeBetween(column="duplicate", max_value=self.limits.max_duplicate_share),
            ],
        )
        results = [self._validate(self._scores_batch, frame, score_suite)]
        tested = windows[windows["n"] > 0]
        if len(tested):
            ordered = list(QUANTILES)
            steps = np.diff(tested[["min", *ordered, "max"]].to_numpy(), axis=1)
            order_frame = pd.DataFrame({"quantiles_ordered": (steps >= 0).all(axis=1).astype(int)})
            order_suite = self._suite(
                "window_statistics", [expect.ExpectColumnMinToBeBetween(column="quantiles_ordered", min_value=1)]
            )
            results.append(self._validate(self._scores_batch, order_frame, order_suite))
        return _merge("after_scoring", results)

    def _validate(self, batch_definition: Any, frame: pd.DataFrame, suite: Any) -> GateResult:
        result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format="SUMMARY"
        )
        failed = []
        for outcome in result.results:
            if outcome.success:
                continue
            observed = outcome.result.get("observed_value")
            if observed is None:
                observed = f"{outcome.result.get('unexpected_count')} unexpected"
            entry = {"expectation": outcome.expectation_config.type, "observed": _plain(observed)}
            if "column" in outcome.expectation_config.kwargs:
                entry["column"] = outcome.expectation_config.kwargs["column"]
            failed.append(entry)
        return GateResult(suite.name, result.success, failed)


def _merge(name: str, results: list[GateResult]) -> GateResult:
    return GateResult(name, all(r.success for r in results), [f for r in results for f in r.failed])


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
