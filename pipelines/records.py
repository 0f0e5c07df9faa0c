"""What flows through the pipeline, and the Parquet schemas it writes.

The schemas are a contract: calibration, flows, alerts and users' own DuckDB/pandas queries read them.
Every table is Hive-partitioned by ``window_start=YYYY-MM-DDTHH-MM-SSZ`` (the partition key is the only
place window_start is stored, so readers get it as a string in that format).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from scoring.features import FEATURES

RejectStage = Literal["list", "manifest", "read", "decode"]

# Score columns every scores table has; scores registered beyond these are appended after them.
CORE_SCORE_COLUMNS = ("gradnorm", "energy", "msp", "maxlogit", "feature_l1", "output_l1")
# Image property columns (scoring.properties) after the scores, likewise.
CORE_PROPERTY_COLUMNS = (
    "brightness", "contrast", "colourfulness", "sharpness", "noise", "blockiness", "jpeg_quality", "width", "height",
    "aspect_ratio",
)  # fmt: skip
# The tag of every dead-letter output: images listed but not scored.
REJECTED = "rejected"
# The tables a scoring run writes, one file per (window, source) each.
SCORED_TABLES = ("scores", "windows", REJECTED)
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}

_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ImageRef:
    """One listed image, before its bytes are read."""

    uri: str
    event_time: dt.datetime | None  # None until the object's modification time is looked up
    segment: str = ""


@dataclass(frozen=True)
class EncodedImage:
    """An image's bytes, read and placed in time, for the model handler to decode and score."""

    image_id: str  # sha256 of the bytes
    uri: str
    event_time: dt.datetime
    segment: str
    data: bytes


@dataclass(frozen=True)
class Rejected:
    """An image that was listed but could not be scored, and why."""

    uri: str
    event_time: dt.datetime | None
    stage: RejectStage
    reason: str  # short code, e.g. "truncated", "missing_uri", "not_found"
    error: str  # the full message, naming the input and the fix
    segment: str = ""


def measured_columns(score_names: tuple[str, ...], property_names: tuple[str, ...]) -> tuple[str, ...]:
    """The per-image values of the scores table, in its order: core scores, other scores, core properties, others."""

    def ordered(names: tuple[str, ...], core: tuple[str, ...]) -> list[str]:
        return [*core, *(name for name in names if name not in core)]

    return (*ordered(score_names, CORE_SCORE_COLUMNS), *ordered(property_names, CORE_PROPERTY_COLUMNS))


def scores_schema(columns: tuple[str, ...], *, keeps_features: bool = False) -> pa.Schema:
    """The scores table for these measured columns (:func:`measured_columns`), and with ``keeps_features`` the
    projected penultimate features of each image (float32: the drift tests need no more digits, and the table half
    the bytes)."""
    features = [(FEATURES, pa.list_(pa.float32()))] if keeps_features else []
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("event_time", _TIMESTAMP),
            ("segment", pa.string()),
            ("model_id", pa.string()),
            *[(name, pa.float64()) for name in columns],
            ("pred", pa.int64()),
            *features,
        ]
    )


WINDOWS_SCHEMA = pa.schema(
    [
        ("window_end", _TIMESTAMP),
        ("segment", pa.string()),
        ("score", pa.string()),
        ("n", pa.int64()),
        ("n_rejected", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        *[(name, pa.float64()) for name in QUANTILES],
        ("sketch", pa.binary()),  # serialized datasketches kll_doubles_sketch
        ("model_id", pa.string()),
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("event_time", _TIMESTAMP),
        ("segment", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)


def table_values(table: pa.Table, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named per-image values of a scores table as arrays: one number per image, or for the features (N, D)."""
    values = {}
    for name in names:
        column = table.column(name).combine_chunks()
        if name == FEATURES:
            values[name] = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(column), -1)
        else:
            values[name] = column.to_numpy(zero_copy_only=False)
    return values
