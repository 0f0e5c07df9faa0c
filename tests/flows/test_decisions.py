"""The decisions table across versions: what gradwatch 0.1 wrote is read beside today's rows, by the report too."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from flows.monitor.decisions import DECISIONS_SCHEMA, decision_row, read_decisions, write_decision
from flows.monitor.window import WindowOutcome
from flows.report import render_report
from pipelines.store import OutputStore
from scoring import drift

START = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
# As 0.1 wrote it: fired tests as "segment/score/test" strings, "-" for no segment.
OLD_SCHEMA = DECISIONS_SCHEMA.set(DECISIONS_SCHEMA.get_field_index("fired"), pa.field("fired", pa.list_(pa.string())))


def test_decisions_of_0_1_read_beside_todays_and_in_the_report(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    new = WindowOutcome(
        START + HOUR,
        START + 2 * HOUR,
        "drift",
        drift.WindowDecision(
            "drift", 0.01, {"dock": 60}, [drift.TestRecord("ks", "msp", "dock", 0.5, 1e-9, 0.001, True)]
        ),
        scored=60,
    )
    old = {
        **decision_row(new, model_id="m@1", threshold_version="1", mlflow_run_id=""),
        "fired": ["site/cam-1/msp/binomial", "-/energy/ks"],
    }
    store.write_partition("decisions", "2026-11-26T12-00-00Z", pa.Table.from_pylist([old], schema=OLD_SCHEMA), part="p")
    write_decision(store, new, decision_row(new, model_id="m@1", threshold_version="1", mlflow_run_id=""), part="p")
    rows = sorted(read_decisions(store).to_pylist(), key=lambda row: row["window_start"])
    assert [row["fired"] for row in rows] == [
        [
            {"test": "beta_binomial", "score": "msp", "segment": "site/cam-1"},
            {"test": "ks", "score": "energy", "segment": ""},
        ],
        [{"test": "ks", "score": "msp", "segment": "dock"}],
    ]
    page, _ = render_report(store)
    assert "site/cam-1/msp/beta_binomial, energy/ks" in page
    assert "dock/msp/ks" in page
