"""Checking thresholds against production: does their reference represent what OUT's windows hold?

The check itself is :func:`scoring.reference_check.check_reference`; this module finds its production images (the
healthy-looking windows already scored into OUT), records the verdict on the threshold version in MLflow, and runs
it once per version and OUT when a monitor starts (:func:`check_on_start`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.calibrate import ScoredPeriod, fitted_values, iso_utc, read_period, scored_windows
from flows.registry import ThresholdRegistry, ThresholdVersion
from pipelines.records import table_values
from pipelines.redaction import redact
from pipelines.store import OutputStore
from scoring import GradwatchError
from scoring.calibration import Calibration
from scoring.reference_check import ReferenceCheck, check_reference

# A day holds every hour's light, shift and traffic once: shorter periods judge a reference by part of its cycle.
DEFAULT_PERIOD = dt.timedelta(hours=24)
# Which versions were checked against this OUT, so that a monitor starting again does not check again.
STATE_FILE = "_state/reference_check.json"
REPRESENTATIVE, NOT_REPRESENTATIVE = "representative", "not_representative"

logger = logging.getLogger(__name__)


def last_day(store: OutputStore, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime] | None:
    """The 24 hours up to the end of OUT's latest scored window (or ``now``, when earlier); None before any."""
    starts = [start for start in scored_windows(store) if now is None or start < now]
    if not starts:
        return None
    latest = store.read_window("windows", starts[-1])
    # A window whose images all went since keeps an empty partition, with no columns to read.
    ends = (latest.column("window_end").to_pylist() if "window_end" in latest.column_names else []) or [starts[-1]]
    until = max(ends) if now is None else min(max(ends), now)
    return until - DEFAULT_PERIOD, until


def healthy_production(
    period: ScoredPeriod, registry: ThresholdRegistry, calibration: Calibration, version: ThresholdVersion
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The period's values that look healthy, and their segments: every window but those that failed data quality.

    Windows decided as drift count: an unrepresentative reference is what makes healthy windows drift, so leaving
    them out would hide what the check looks for. Fitted values (ViM, features) are kept only when every window was
    decided by versions of the calibration's own fitted state; computed with another, they are another score.
    """
    failed = {start for start, rows in period.decisions.items() if any(not row["data_quality_passed"] for row in rows)}
    table = period.scores
    if failed and table.num_rows:
        starts = pa.array(sorted(failed), pa.timestamp("us", tz="UTC"))
        table = table.filter(pc.invert(pc.is_in(table.column("window_start"), starts)))
    if not table.num_rows:
        return {}, []
    kept = set(table.column("window_start").to_pylist())
    versions = {v for v, starts in period.versions().items() if kept & set(starts)}

    def fitted_state_of(other: str) -> Mapping[str, Any]:
        if other == version.version:
            return calibration.fitted_scores
        return registry.calibration(registry.get(version.name, other)).fitted_scores

    same_state = not (kept & set(period.undecided)) and all(
        _canonical(fitted_state_of(other)) == _canonical(calibration.fitted_scores) for other in versions
    )
    names = [
        name
        for name in calibration.scores
        if name in table.column_names
        and (same_state or name not in fitted_values())
        and table.column(name).null_count == 0
    ]
    return table_values(table, names), table.column("segment").to_pylist()


def check_against(
    store: OutputStore,
    registry: ThresholdRegistry,
    version: ThresholdVersion,
    *,
    since: dt.datetime,
    until: dt.datetime,
    calibration: Calibration | None = None,
) -> ReferenceCheck:
    """Check a version's thresholds against OUT's windows in [since, until) and record the verdict on the version.

    Raises:
        GradwatchError: too few healthy-looking images in the period, naming it and the fix.
    """
    calibration = calibration or registry.calibration(version)
    period = read_period(store.out, since, until)
    values, segments = healthy_production(period, registry, calibration, version)
    return _check_and_record(period, values, segments, registry, calibration, version)


# Resampled windows per size when a monitor checks on its own, inside a scheduled run: enough to tell a rate whose
# interval's low end clears twice alpha (a mismatched reference pages tens of percent of windows, 65% on the bench)
# for a fifth of the calibration's 500 decisions a size; `thresholds check` runs the calibration's full count.
ON_START_WINDOWS = 100


def check_on_start(
    store: OutputStore,
    registry: ThresholdRegistry,
    calibration: Calibration,
    version: ThresholdVersion,
    now: dt.datetime,
) -> ReferenceCheck | None:
    """Check a monitor's thresholds against the last day of windows already scored into OUT, once per version.

    Returns:
        The check, recorded on the version and remembered in OUT's state; None, doing nothing, when this version was
        checked against OUT before, or OUT holds fewer than twice ``min_window`` healthy-looking images yet (the
        next start checks again).
    """
    state = _load_state(store)
    key = f"{version.name}/{version.version}"
    if key in state:
        return None
    found = last_day(store, now)
    if found is None:
        return None
    period = read_period(store.out, *found)
    values, segments = healthy_production(period, registry, calibration, version)
    if len(segments) < 2 * calibration.config.min_window:
        return None
    windows = min(ON_START_WINDOWS, calibration.config.check_windows)
    record = _check_and_record(period, values, segments, registry, calibration, version, windows=windows)
    state[key] = {
        "checked_at": now.isoformat(timespec="seconds"),
        "since": iso_utc(period.since),
        "until": iso_utc(period.until),
        "representative": record.representative,
    }
    store.write_file(STATE_FILE, json.dumps(state, indent=1, sort_keys=True).encode())
    if not record.representative:
        logger.warning(
            "thresholds %s v%s do not represent production in %s: %s; %s",
            version.name, version.version, period.describe(), record.summary(), record.fix,
        )  # fmt: skip
    return record


def _check_and_record(
    period: ScoredPeriod,
    values: Mapping[str, np.ndarray],
    segments: list[str],
    registry: ThresholdRegistry,
    calibration: Calibration,
    version: ThresholdVersion,
    *,
    windows: int | None = None,
) -> ReferenceCheck:
    if not values:
        raise GradwatchError(
            f"no healthy-looking scored windows in {period.describe()} to check {version.name} v{version.version} "
            "against; pick a period the monitor or 'gradwatch score' wrote, with --since/--until"
        )
    fix = (
        f"gradwatch calibrate --from-out {redact(period.out)} --since {iso_utc(period.since)} "
        f"--until {iso_utc(period.until)}"
    )
    try:
        record = check_reference(calibration, values, segments=segments, windows=windows, fix_command=fix)
    except ValueError as error:
        raise GradwatchError(f"{period.describe()}: {error} (--since/--until)") from None
    registry.tag(
        version.name,
        version.version,
        {
            "reference_check": REPRESENTATIVE if record.representative else NOT_REPRESENTATIVE,
            "reference_check_detail": record.summary(),
            "reference_check_against": period.describe(),
            "reference_check_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return record


def _load_state(store: OutputStore) -> dict[str, Any]:
    path = store.path(STATE_FILE)
    store.fs.invalidate_cache(path)
    try:
        with store.fs.open(path, "rb") as file:
            return json.loads(file.read())
    except FileNotFoundError:
        return {}


def _canonical(state: Mapping[str, Any]) -> str:
    return json.dumps(state, sort_keys=True)
