"""The decisions table: one row per window and SOURCE, what was decided and why (a contract, as the others)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa

from flows.monitor.window import WindowOutcome
from pipelines.store import OutputStore
from pipelines.times import window_label

FIRED_TEST = pa.struct([("test", pa.string()), ("score", pa.string()), ("segment", pa.string())])

DECISIONS_SCHEMA = pa.schema(
    [
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),  # drift, ok, insufficient_data, no_data
        ("is_drift", pa.bool_()),
        ("n", pa.int64()),
        ("n_rejected", pa.int64()),
        ("fired", pa.list_(FIRED_TEST)),
        ("data_quality_passed", pa.bool_()),
        ("data_quality_failures", pa.string()),  # JSON list of failed expectations
        ("decision", pa.string()),  # JSON: every test record and effect size
        ("model_id", pa.string()),
        ("threshold_version", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
    ]
)


def read_decisions(store: OutputStore) -> pa.Table:
    """Every window's decision, including those gradwatch 0.1 wrote (with ``fired`` as strings)."""
    return store.read_table("decisions", upgrade=_upgrade)


def _upgrade(rows: pa.Table) -> pa.Table:
    """Decisions of 0.1 listed fired tests as ``segment/score/test`` strings ("-" for no segment), named the OOD-rate
    test "binomial", and could hold a segment containing "/": split from the right, they are today's records."""
    fired = rows.schema.field("fired").type
    if fired == DECISIONS_SCHEMA.field("fired").type:
        return rows
    upgraded = []
    for names in rows.column("fired").to_pylist():
        records = []
        for name in names or []:
            segment, score, test = name.rsplit("/", 2)
            records.append(
                {"test": _RENAMED.get(test, test), "score": score, "segment": "" if segment == "-" else segment}
            )
        upgraded.append(records)
    index = rows.schema.get_field_index("fired")
    return rows.set_column(index, "fired", pa.array(upgraded, DECISIONS_SCHEMA.field("fired").type))


_RENAMED = {"binomial": "beta_binomial"}


def decision_row(
    outcome: WindowOutcome, *, model_id: str, threshold_version: str, mlflow_run_id: str
) -> dict[str, Any]:
    """The window's row of the decisions table."""
    decision = outcome.decision
    return {
        "window_end": outcome.window_end,
        "status": outcome.status,
        "is_drift": outcome.is_drift,
        "n": outcome.scored,
        "n_rejected": outcome.rejected,
        "fired": [{"test": f.test, "score": f.score, "segment": f.segment} for f in outcome.fired],
        "data_quality_passed": outcome.data_quality_passed,
        "data_quality_failures": json.dumps(outcome.failed_expectations),
        "decision": json.dumps(decision.to_dict() if decision else {}, default=float),
        "model_id": model_id,
        "threshold_version": threshold_version,
        "mlflow_run_id": mlflow_run_id,
        "decided_at": dt.datetime.now(dt.UTC),
    }


def write_decision(
    store: OutputStore, outcome: WindowOutcome, row: dict[str, Any], *, part: str, replaces: tuple[str, ...] = ()
) -> None:
    """Replace the window's decision of this SOURCE (``part``, and its keys of old, ``replaces``) with ``row``."""
    table = pa.Table.from_pylist([row], schema=DECISIONS_SCHEMA)
    store.write_partition("decisions", window_label(outcome.window_start), table, part=part, replaces=replaces)
