"""A self-contained HTML drift report of an OUT folder: charts, the alerts, the windows, why each alerted window
alerted, its worst images and the files that were not scored.

Charts are PNGs (matplotlib) embedded as data URIs, so the page is one file that opens anywhere; the same
PNGs can be logged to the MLflow monitoring run. Every time in the page, in tables, captions and chart axes, is
written one way (:data:`flows.plots.TIME_FORMAT`), and every chart over time has each window on a UTC axis, empty
ones included, with the drift windows shaded.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import kll_doubles_sketch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from flows.alerts import Outbox
from flows.monitor.decisions import read_decisions
from flows.monitor.paging import most_out_of_distribution
from flows.plots import format_time, plt, png, staircase, time_axis
from pipelines.records import QUANTILES, REJECTED
from pipelines.store import OutputStore
from scoring import GradwatchError, decision_scores
from scoring.calibration import Calibration
from scoring.drift import FiredTest
from scoring.features import FEATURES

# What a scoring or monitoring run writes under OUT; a report needs at least one of them.
OUTPUT_TABLES = ("scores", "windows", "rejected", "decisions")

BAND_COLOUR, REFERENCE_COLOUR, ALERT_COLOUR = "#4c72b0", "#55a868", "#c44e52"
EMPTY_COLOUR, SECOND_COLOUR = "#8c8c8c", "#8172b2"
# Windows decided without a test: on the charts, shaded apart from the windows that had data to test.
EMPTY_STATUSES = ("no_data", "insufficient_data")
# Rejected files listed in the page; OUT/rejected holds every one, and the page counts the rest.
REJECTED_SHOWN = 50
_BANDS = ("p05", "p25", "p50", "p75", "p95")
# A window's partition label (2026-11-26T14-00-00Z), as the monitor's alert summaries name windows.
_LABEL = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-\d{2}Z")

Span = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True)
class Timeline:
    """Every window OUT knows, for the charts over time: each one's end, which decided drift, which had nothing to
    test."""

    spans: dict[dt.datetime, dt.datetime]  # window start -> end
    drift: list[Span]
    empty: list[Span]

    @classmethod
    def of(cls, decisions: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]) -> Timeline | None:
        """From the decisions and the windows table (a scored OUT not yet decided has windows only)."""
        spans = {row["window_start"]: row["window_end"] for row in [*windows, *decisions]}
        if not spans:
            return None
        drift = sorted({(row["window_start"], row["window_end"]) for row in decisions if row["status"] == "drift"})
        empty = sorted({(r["window_start"], r["window_end"]) for r in decisions if r["status"] in EMPTY_STATUSES})
        return cls(dict(sorted(spans.items())), drift, empty)

    @property
    def start(self) -> dt.datetime:
        return next(iter(self.spans))

    @property
    def end(self) -> dt.datetime:
        return max(self.spans.values())

    def draw(self, axis: Axes, *, ticks: int = 7) -> None:
        """Shade the drift and the empty windows over their whole width, on a UTC axis over every window."""
        for spans, colour, alpha, label in ((self.empty, EMPTY_COLOUR, 0.18, "no data / too few images"),
                                            (self.drift, ALERT_COLOUR, 0.2, "drift window")):  # fmt: skip
            for index, (start, end) in enumerate(spans):
                axis.axvspan(start, end, color=colour, alpha=alpha, linewidth=0, label=label if index == 0 else None)
        time_axis(axis, self.start, self.end, ticks=ticks)


@dataclass(frozen=True)
class ReportTables:
    """What the report reads from OUT, each table once."""

    windows: pa.Table
    scores: pa.Table
    rejected: pa.Table
    decisions: list[dict[str, Any]]  # time order, each with its decision JSON parsed as "document"

    @classmethod
    def read(cls, store: OutputStore) -> ReportTables:
        decisions = sorted(read_decisions(store).to_pylist(), key=lambda row: row["window_start"])
        for row in decisions:
            row["document"] = json.loads(row["decision"] or "{}")
        scores = store.read_table("scores")
        # One list of 128 numbers per image, never shown: left behind rather than carried through every filter.
        if FEATURES in scores.column_names:
            scores = scores.drop_columns([FEATURES])
        return cls(store.read_table("windows"), scores, store.read_table(REJECTED), decisions)

    @property
    def timeline(self) -> Timeline | None:
        windows = self.windows.select(["window_start", "window_end"]).to_pylist() if self.windows.num_rows else []
        return Timeline.of(self.decisions, windows)


def _quantiles(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """One window's quantiles of one score over all its rows (segments, sources), merging their sketches."""
    if len(rows) == 1:
        return {name: rows[0][name] for name in _BANDS}
    sketch = kll_doubles_sketch.deserialize(rows[0]["sketch"])
    for row in rows[1:]:
        sketch.merge(kll_doubles_sketch.deserialize(row["sketch"]))
    return {name: sketch.get_quantile(QUANTILES[name], inclusive=True) for name in _BANDS}


def _per_window(rows: Iterable[Mapping[str, Any]], timeline: Timeline) -> tuple[list[Span], list[dict[str, float]]]:
    grouped: dict[dt.datetime, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["window_start"]].append(row)
    starts = sorted(grouped)
    return [(start, timeline.spans[start]) for start in starts], [_quantiles(grouped[start]) for start in starts]


def _legend(axis: Axes) -> None:
    # Beside the plot, where it hides no window's data; constrained layout makes room for it.
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)


def quantile_bands(windows: pa.Table, timeline: Timeline, calibration: Calibration | None) -> Figure | None:
    """Per score: the window's p05-p95 and p25-p75 bands and median over time, against the reference's."""
    rows = [row for row in windows.to_pylist() if row["n"] > 0] if windows.num_rows else []
    names = [name for name in decision_scores() if any(row["score"] == name for row in rows)]
    if not names:
        return None
    figure, axes = plt.subplots(
        len(names), 1, figsize=(11, 2.2 * len(names) + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for axis, name in zip(axes[:, 0], names, strict=True):
        spans, quantiles = _per_window((row for row in rows if row["score"] == name), timeline)
        times, values = staircase(spans, [[q[band] for band in _BANDS] for q in quantiles])
        axis.fill_between(times, values[:, 0], values[:, 4], color=BAND_COLOUR, alpha=0.2, label="window p05-p95")
        axis.fill_between(times, values[:, 1], values[:, 3], color=BAND_COLOUR, alpha=0.4, label="window p25-p75")
        axis.plot(times, values[:, 2], color=BAND_COLOUR, label="window median")
        if calibration is not None and name in calibration.references[""]:
            reference = calibration.references[""][name]
            low, high = np.quantile(reference.sample, [0.05, 0.95])
            axis.axhspan(low, high, color=REFERENCE_COLOUR, alpha=0.12, label="reference p05-p95")
            for index, bound in enumerate(b for b in (reference.lower, reference.upper) if b is not None):
                axis.axhline(bound, color=REFERENCE_COLOUR, linestyle="--",
                             label="per-image threshold" if index == 0 else None)  # fmt: skip
        timeline.draw(axis)
        axis.set_ylabel(name)
    _legend(axes[0, 0])
    axes[0, 0].set_title("score quantiles per window (red: windows decided as drift; grey: no data or too few images)")
    return figure


def ood_rates(scores: pa.Table, timeline: Timeline, calibration: Calibration | None) -> Figure | None:
    """Per score: share of each window's images past the per-image threshold, against the expected share."""
    if calibration is None or scores.num_rows == 0:
        return None
    names = [name for name in decision_scores() if name in calibration.references[""] and name in scores.column_names]
    if not names:
        return None
    starts = np.asarray(scores.column("window_start").to_pylist(), dtype=object)
    windows = sorted(start for start in set(starts) if start in timeline.spans)
    figure, axis = plt.subplots(figsize=(11, 3.6), layout="constrained")
    for name in names:
        reference = calibration.references[""][name]
        outside = reference.is_out_of_distribution(scores.column(name).to_numpy())
        times, rates = staircase(
            [(start, timeline.spans[start]) for start in windows], [np.mean(outside[starts == s]) for s in windows]
        )
        axis.plot(times, rates, label=name)
    expected = np.mean([calibration.references[""][name].expected_ood_rate for name in names])
    axis.axhline(expected, color=REFERENCE_COLOUR, linestyle="--", label=f"expected on healthy images ({expected:.0%})")
    timeline.draw(axis)
    axis.set_ylabel("OOD rate")
    axis.set_title(
        f"images past the per-image threshold (alert rule: {', '.join(calibration.tests)} tests of every score,\n"
        f"Holm-corrected to alpha={calibration.config.alpha:g} per window)",
        fontsize=10,
    )
    _legend(axis)
    return figure


def segment_medians(windows: pa.Table, timeline: Timeline, score: str = "msp") -> Figure | None:
    """Small multiples: each segment's median of one score over time."""
    rows = [row for row in windows.to_pylist() if row["score"] == score and row["n"] > 0] if windows.num_rows else []
    segments = sorted({row["segment"] for row in rows})
    if not segments:
        return None
    columns = min(3, len(segments))
    lines = (len(segments) + columns - 1) // columns
    figure, axes = plt.subplots(
        lines, columns, figsize=(11, 2.6 * lines + 0.6), squeeze=False, sharey=True, layout="constrained"
    )
    for axis, segment in zip(axes.flat, segments, strict=False):
        spans, quantiles = _per_window((row for row in rows if row["segment"] == segment), timeline)
        axis.plot(*staircase(spans, [q["p50"] for q in quantiles]), color=BAND_COLOUR)
        timeline.draw(axis, ticks=4)
        axis.set_title(segment or "(no segment)", fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(segments) :]:
        axis.set_visible(False)
    figure.suptitle(f"median {score} per segment")
    return figure


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _interval(entry: Mapping[str, Any] | None) -> list[float]:
    entry = entry or {}
    return [_number(entry.get("estimate")), _number(entry.get("low")), _number(entry.get("high"))]


def _by_segment(decisions: Sequence[Mapping[str, Any]], key: str) -> dict[str, list[tuple[Span, dict]]]:
    """Per segment, each window's entry of one key of the decision JSON that decisions written before it lack."""
    entries: dict[str, list[tuple[Span, dict]]] = defaultdict(list)
    for row in decisions:
        for segment, entry in (row["document"].get(key) or {}).items():
            entries[segment].append(((row["window_start"], row["window_end"]), entry))
    return dict(sorted(entries.items()))


def estimated_accuracy(decisions: Sequence[Mapping[str, Any]], timeline: Timeline) -> Figure | None:
    """Per segment: the accuracy estimated without labels (ATC, DOC) with its interval, against the reference's
    accuracy and confidence and the window's confidence."""
    segments = _by_segment(decisions, "accuracy")
    if not segments:
        return None
    figure, axes = plt.subplots(
        len(segments), 1, figsize=(11, 2.4 * len(segments) + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for axis, (segment, entries) in zip(axes[:, 0], segments.items(), strict=True):
        spans = [span for span, _ in entries]
        for method, colour in (("atc", BAND_COLOUR), ("doc", SECOND_COLOUR)):
            times, values = staircase(spans, [_interval(entry.get(method)) for _, entry in entries])
            if np.isnan(values[:, 0]).all():
                continue
            name = method.upper()
            axis.fill_between(times, values[:, 1], values[:, 2], color=colour, alpha=0.25, label=f"{name} interval")
            axis.plot(times, values[:, 0], color=colour, label=f"{name} estimate")
        lines = (("confidence", "window confidence", ":", "#555555"),
                 ("reference_confidence", "reference confidence", "--", REFERENCE_COLOUR),
                 ("reference", "reference accuracy", "-", REFERENCE_COLOUR))  # fmt: skip
        for key, label, style, colour in lines:
            times, values = staircase(spans, [_number(entry.get(key)) for _, entry in entries])
            if not np.isnan(values).all():
                axis.plot(times, values, linestyle=style, color=colour, label=label)
        timeline.draw(axis)
        axis.set_ylabel(segment or "feed")
        _legend(axis)
    axes[0, 0].set_title("estimated accuracy per window (no labels needed), against the reference")
    return figure


def sequential_statistics(decisions: Sequence[Mapping[str, Any]], timeline: Timeline) -> Figure | None:
    """Per segment: the sequential chart's statistic over the windows against its limit, signals marked."""
    segments = _by_segment(decisions, "sequential")
    if not segments:
        return None
    figure, axis = plt.subplots(figsize=(11, 3.2), layout="constrained")
    for index, (segment, entries) in enumerate(segments.items()):
        colour = f"C{index % 10}"
        spans = [span for span, _ in entries]
        charts = sorted({str(entry.get("chart", "")) for _, entry in entries} - {""})
        label = " ".join([segment or "feed", *charts])
        values = [[_number(entry.get("statistic")), _number(entry.get("limit"))] for _, entry in entries]
        times, heights = staircase(spans, values)
        axis.plot(times, heights[:, 0], color=colour, label=f"{label} statistic")
        axis.plot(times, heights[:, 1], color=colour, linestyle="--", label=f"{label} limit")
        signalled = [
            (start + (end - start) / 2, value[0])
            for ((start, end), entry), value in zip(entries, values, strict=True)
            if entry.get("signalled")
        ]
        if signalled:
            axis.scatter(*zip(*signalled, strict=True), color=ALERT_COLOUR, marker="x", zorder=3)
    timeline.draw(axis)
    axis.set_ylabel("statistic")
    axis.set_title("sequential statistic per window against its limit (x: signalled)")
    _legend(axis)
    return figure


def report_figures(tables: ReportTables, calibration: Calibration | None = None) -> dict[str, Figure]:
    """Every chart of the report by file name, as figures (open: the caller closes them, :func:`flows.plots.png`
    does)."""
    timeline = tables.timeline
    if timeline is None:
        return {}
    figures = {
        "quantile_bands.png": quantile_bands(tables.windows, timeline, calibration),
        "ood_rates.png": ood_rates(tables.scores, timeline, calibration),
        "segments.png": segment_medians(tables.windows, timeline),
        "accuracy.png": estimated_accuracy(tables.decisions, timeline),
        "sequential.png": sequential_statistics(tables.decisions, timeline),
    }
    return {name: figure for name, figure in figures.items() if figure is not None}


def thumbnail(uri: str, size: int = 112) -> str | None:
    """A small JPEG of an image as a data URI, or None when it cannot be read."""
    try:
        with fsspec.open(uri, "rb") as file, Image.open(file) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
    except Exception:  # a thumbnail is a courtesy: a missing image must not break the report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_report(
    store: OutputStore, calibration: Calibration | None = None, *, images_per_window: int = 8
) -> tuple[str, dict[str, bytes]]:
    """The report's HTML, and its charts by file name (to log them elsewhere too)."""
    tables = ReportTables.read(store)
    charts = {name: png(figure, dpi=100) for name, figure in report_figures(tables, calibration).items()}
    page = _html(store.url(), tables, charts, calibration, images_per_window, _alerts(Outbox(store)))
    return page, charts


def _alerts(outbox: Outbox) -> list[dict]:
    """Every alert in OUT's outbox, delivered or still pending, in time order."""
    delivered = [{**entry["alert"], "delivered_to": len(entry["delivered_to"]), "pending": False}
                 for entry in outbox.delivered()]  # fmt: skip
    pending = [{**entry["alert"], "delivered_to": len(entry["delivered_to"]), "pending": True}
               for _, entry in outbox.pending()]  # fmt: skip
    return sorted(delivered + pending, key=lambda alert: (alert["window"]["start"], alert["kind"]))


def _readable_times(text: str) -> str:
    """Window labels in a message (the monitor names windows by their partition) in the page's one time format."""
    return _LABEL.sub(r"\1 \2:\3 UTC", text)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; margin-bottom: 0.75rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.error { max-width: 40rem; overflow-wrap: anywhere; }
#alerts td:first-child, #windows td:first-child, #rejected td:first-child { white-space: nowrap; }
tr.drift { background: #f8d7da; } tr.warn { background: #fff3cd; }
.sev-page { color: #a4161a; font-weight: 600; } .sev-warn { color: #8a6d00; font-weight: 600; }
.chart img { max-width: 100%; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; }
.strip figure { margin: 0; width: 128px; font-size: 0.72rem; overflow-wrap: anywhere; }
.strip img { border: 1px solid #ccc; display: block; }
section.alerted { border-top: 2px solid #c44e52; margin-top: 1.5rem; }
"""


def _html(
    out: str,
    tables: ReportTables,
    charts: Mapping[str, bytes],
    calibration: Calibration | None,
    images_per_window: int,
    alerts: list[dict],
) -> str:
    escape = html.escape
    decisions = tables.decisions
    alert_rows = "".join(
        f'<tr class="{escape(alert["kind"])}">'
        f"<td>{format_time(dt.datetime.fromisoformat(alert['window']['start']))}</td>"
        f"<td>{escape(alert['kind'])}</td><td>{escape(alert['segment'] or '-')}</td>"
        f"<td>{escape(_readable_times(alert['summary']))}</td>"
        f"<td>{'pending' if alert['pending'] else 'delivered'}</td></tr>"
        for alert in alerts
    )
    images = "".join(
        f'<figure class="chart" id="{escape(name.removesuffix(".png"))}"><img alt="{escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in charts.items()
    )
    rows = []
    for row in decisions:
        css = "drift" if row["status"] == "drift" else ("warn" if row["status"] != "ok" else "")
        quality = "passed" if row["data_quality_passed"] else escape(
            ", ".join(f"{f['expectation']}({f.get('column', '')})" for f in json.loads(row["data_quality_failures"]))
        )  # fmt: skip
        document = row["document"]
        rows.append(
            f'<tr class="{css}"><td>{format_time(row["window_start"])}</td><td>{escape(row["status"])}</td>'
            f"<td>{_severity_levels(document)}</td><td>{row['n']}</td><td>{row['n_rejected']}</td>"
            f"<td>{escape(', '.join(FiredTest(**f).label for f in row['fired']) or '-')}</td>"
            f"<td>{_accuracy_cell(document)}</td><td>{_what_moved(document)}</td><td>{quality}</td></tr>"
        )
    alerted = [row for row in decisions if row["status"] == "drift" or row["document"].get("severity")]
    sections = "".join(_alerted_section(tables.scores, row, images_per_window, calibration) for row in alerted)
    threshold = f"thresholds v{escape(decisions[-1]['threshold_version'])}, " if decisions else ""
    model = escape(calibration.model_id if calibration else (decisions[-1]["model_id"] if decisions else "-"))
    drift_count = sum(row["status"] == "drift" for row in decisions)
    span = (
        f"{format_time(decisions[0]['window_start'])} to {format_time(decisions[-1]['window_end'])}, "
        if decisions
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gradwatch drift report</title>
<style>{_STYLE}</style></head><body>
<h1>gradwatch drift report</h1>
<p>{escape(out)} &middot; model {model} &middot; {threshold}{span}{len(decisions)} windows, {drift_count} with drift</p>
<h2>Alerts</h2>
<table id="alerts"><thead><tr><th>window</th><th>kind</th><th>segment</th><th>summary</th><th>delivery</th></tr>
</thead><tbody>{alert_rows or '<tr><td colspan="5">No alerts.</td></tr>'}</tbody></table>
<h2>Charts</h2>{images or "<p>No windows yet.</p>"}
<h2>Windows</h2>
<table id="windows"><thead><tr><th>window</th><th>status</th><th>severity</th><th>n</th><th>rejected</th>
<th>fired</th><th>estimated accuracy</th><th>what moved</th><th>data quality</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Alerted windows: what fired, and the images furthest out of distribution</h2>
{sections or "<p>No drift alerts.</p>"}
<h2>Rejected files</h2>
{_rejected_section(tables.rejected)}
</body></html>
"""


def _what_moved(document: Mapping[str, Any]) -> str:
    # Decisions written before tests said what moved carry no such list: those windows show "-".
    return "<br>".join(html.escape(line) for line in document.get("what_moved", [])) or "-"


def _segment_name(segment: str) -> str:
    return html.escape(segment) if segment else "feed"


def _severity_levels(document: Mapping[str, Any]) -> str:
    severity = document.get("severity") or {}
    return "<br>".join(
        f'<span class="sev-{html.escape(entry.get("level", ""))}">{html.escape(entry.get("level", "?"))}</span> '
        f"{_segment_name(segment)}"
        for segment, entry in sorted(severity.items())
    ) or "-"  # fmt: skip


def _percent_interval(entry: Mapping[str, Any]) -> str:
    estimate, low, high = _interval(entry)
    return f"{estimate:.1%} [{low:.1%}, {high:.1%}]"


def _accuracy_cell(document: Mapping[str, Any]) -> str:
    """Per segment, the accuracy estimated without labels (ATC, with a labelled reference) and the fall in confidence
    (all a calibration without labels estimates, and what its severity reads)."""
    lines = []
    for segment, entry in sorted((document.get("accuracy") or {}).items()):
        parts = [f"ATC {_percent_interval(entry['atc'])}"] if entry.get("atc") else []
        if entry.get("drop"):
            parts.append(f"drop {_percent_interval(entry['drop'])}")
        if not parts:
            continue
        line = f"{_segment_name(segment)}: {', '.join(parts)}"
        if entry.get("reference") is not None:
            line += f" (reference {entry['reference']:.1%})"
        lines.append(line)
    return "<br>".join(lines) or "-"


def _value(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _fired_tests_table(row: Mapping[str, Any]) -> str:
    """The tests that fired in a window, most significant first, each with the effect size of its value."""
    document = row["document"]
    records = [test for test in document.get("tests", []) if test.get("is_drift")]
    if not records:  # a decision without its test records (none was tested, or written before they were kept)
        records = list(row["fired"])
    effects = {(effect["score"], effect["segment"]): effect for effect in document.get("effects", [])}
    cells = []
    for record in sorted(records, key=lambda record: _number(record.get("p_value"))):
        effect = effects.get((record["score"], record["segment"]), {})
        ood = (f"{effect['ood_rate']:.1%} ({effect['expected_ood_rate']:.1%})"
               if effect.get("ood_rate") is not None else "-")  # fmt: skip
        numbers = (_value(record.get("statistic")), _value(record.get("p_value"), ".2g"),
                   _value(record.get("threshold"), ".2g"), _value(effect.get("median_shift"), "+.2f"),
                   _value(effect.get("wasserstein"), ".2f"), _value(effect.get("psi"), ".2f"), ood)  # fmt: skip
        cells.append(
            f"<tr><td>{_segment_name(record['segment'])}</td><td>{html.escape(record['score'])}</td>"
            f"<td>{html.escape(record['test'])}</td>"
            + "".join(f'<td class="number">{number}</td>' for number in numbers)
            + f"<td>{html.escape(record.get('summary') or '-')}</td></tr>"
        )
    if not cells:
        return "<p>No test fired.</p>"
    return (
        '<table class="fired-tests"><thead><tr><th>segment</th><th>score</th><th>test</th><th>statistic</th>'
        "<th>p-value</th><th>Holm threshold</th><th>median shift (IQR)</th><th>Wasserstein (SD)</th><th>PSI</th>"
        f"<th>OOD rate (expected)</th><th>what moved</th></tr></thead><tbody>{''.join(cells)}</tbody></table>"
    )


def _severity_reasons(document: Mapping[str, Any]) -> str:
    return "".join(
        f'<p class="severity"><span class="sev-{html.escape(entry.get("level", ""))}">'
        f"{html.escape(entry.get('level', '?'))}</span> {_segment_name(segment)}: "
        f"{html.escape('; '.join(entry.get('reasons', [])) or '-')}</p>"
        for segment, entry in sorted((document.get("severity") or {}).items())
    )


def _sequential_lines(document: Mapping[str, Any]) -> str:
    return "".join(
        f"<p>sequential {html.escape(str(entry.get('chart', '')))} ({_segment_name(segment)}): statistic "
        f"{_value(entry.get('statistic'))} against limit {_value(entry.get('limit'))} over "
        f"{entry.get('windows', '?')} windows, {'signalled' if entry.get('signalled') else 'not signalled'}</p>"
        for segment, entry in sorted((document.get("sequential") or {}).items())
    )


def _alerted_section(scores: pa.Table, row: Mapping[str, Any], k: int, calibration: Calibration | None) -> str:
    start, document = row["window_start"], row["document"]
    accuracy = _accuracy_cell(document)
    return (
        f'<section class="alerted"><h3>{format_time(start)} to {format_time(row["window_end"])}: '
        f"{html.escape(row['status'])}</h3>{_severity_reasons(document)}{_fired_tests_table(row)}"
        + (f"<p>estimated accuracy: {accuracy}</p>" if accuracy != "-" else "")
        + _sequential_lines(document)
        + _strip(scores, row, k, calibration)
        + "</section>"
    )


def _bounds(score: str, segment: str, calibration: Calibration | None) -> str:
    """The per-image bounds an image's value is held to, in words."""
    if calibration is None or score not in calibration.scalar_scores:
        return "bounds not loaded (no approved calibration)"
    reference = calibration.reference(score, segment)
    if reference.lower is not None and reference.upper is not None:
        return f"in distribution {reference.lower:.4g} to {reference.upper:.4g}"
    if reference.lower is not None:
        return f"out of distribution below {reference.lower:.4g}"
    return f"out of distribution above {reference.upper:.4g}"


def _strip(scores: pa.Table, decision: Mapping[str, Any], k: int, calibration: Calibration | None) -> str:
    start = decision["window_start"]
    if scores.num_rows == 0:
        return ""
    in_window = scores.filter(pc.equal(scores.column("window_start"), pa.scalar(start, scores["window_start"].type)))
    if in_window.num_rows == 0:
        return ""
    fired = [FiredTest(**fired) for fired in decision["fired"]]
    segment = fired[0].segment if fired else ""
    score, extreme = most_out_of_distribution(in_window.to_pylist(), fired, k, calibration, segment)
    bounds = html.escape(_bounds(score, segment, calibration))
    figures = []
    for row in extreme:
        name = html.escape(Path(row["uri"]).name)
        src = thumbnail(row["uri"])
        image = f'<img src="{src}" alt="{name}" title="{html.escape(row["uri"])}">' if src else "(not readable)"
        figures.append(
            f"<figure>{image}<figcaption>{name}<br>{html.escape(score)} = {_value(row[score], '.4g')}<br>{bounds}"
            "</figcaption></figure>"
        )
    return f'<h4>ranked on {html.escape(score)}</h4><div class="strip">{"".join(figures)}</div>'


def _rejected_section(rejected: pa.Table) -> str:
    """The files listed but not scored, in time order (unknown times last), the first :data:`REJECTED_SHOWN`."""
    if rejected.num_rows == 0:
        return "<p>No rejected files.</p>"
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    rows = sorted(rejected.to_pylist(), key=lambda r: (r["window_start"] is None, r["window_start"] or epoch, r["uri"]))
    counts = Counter(f"{row['stage']}/{row['reason']}" for row in rows)
    summary = ", ".join(f"{count} {html.escape(kind)}" for kind, count in counts.most_common())
    cells = "".join(
        f"<tr><td>{format_time(row['window_start'])}</td><td>{_segment_name(row.get('segment') or '')}</td>"
        f"<td>{html.escape(row['uri'])}</td><td>{html.escape(row['stage'])}</td><td>{html.escape(row['reason'])}</td>"
        f'<td class="error">{html.escape(row["error"])}</td></tr>'
        for row in rows[:REJECTED_SHOWN]
    )
    more = len(rows) - REJECTED_SHOWN
    rest = f'<p class="more">and {more} more, every one in OUT/rejected</p>' if more > 0 else ""
    return (
        f"<p>{len(rows)} files listed but not scored: {summary}</p>"
        '<table id="rejected"><thead><tr><th>window</th><th>segment</th><th>uri</th><th>stage</th><th>reason</th>'
        f"<th>error</th></tr></thead><tbody>{cells}</tbody></table>{rest}"
    )


def write_report(out: str, destination: str | None = None, *, registry=None, log_to_mlflow: bool = True) -> str:
    """Render OUT's report to ``destination`` (default ``OUT/report.html``; any local path or fsspec URL), with
    the approved calibration's reference when MLflow has it. Returns where it went.

    The charts are also logged to the latest monitoring run of OUT's decisions when ``log_to_mlflow``.
    """
    from flows.registry import RegistryError

    store = OutputStore(out)
    if not any(store.fs.exists(store.path(table)) for table in OUTPUT_TABLES):
        # A mistyped OUT would otherwise be created and get an empty page, which reads as "no drift".
        raise GradwatchError(
            f"OUT {out!r} holds none of gradwatch's outputs ({', '.join(f'{table}/' for table in OUTPUT_TABLES)}): "
            f"check the path, or run `gradwatch monitor SOURCE --out {out}` first"
        )
    decisions = read_decisions(store)
    calibration = None
    latest = max(decisions.to_pylist(), key=lambda row: row["window_start"]) if decisions.num_rows else None
    if registry is not None and latest is not None:
        model_id = latest["model_id"]
        try:
            calibration, _ = registry.load_production(model_id.split("@")[0], model_id)
        except RegistryError:
            calibration = None  # drawn without the reference band; the page says which thresholds were used
    page, charts = render_report(store, calibration)
    if destination is None:
        where = store.write_file("report.html", page.encode())
    else:
        fs, path = fsspec.core.url_to_fs(destination)
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        fs.pipe_file(path, page.encode())
        where = destination
    if log_to_mlflow and registry is not None and latest is not None and latest["mlflow_run_id"]:
        registry.log_report(latest["mlflow_run_id"], {f"report/{name}": data for name, data in charts.items()})
    return where
