"""A self-contained HTML drift report of an OUT folder: charts, the alerts, the windows, the worst images.

Charts are PNGs (matplotlib) embedded as data URIs, so the page is one file that opens anywhere; the same
PNGs can be logged to the MLflow monitoring run.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import posixpath
from collections.abc import Mapping
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
from PIL import Image

from flows.alerts import Outbox
from flows.monitor.decisions import read_decisions
from flows.monitor.paging import most_out_of_distribution
from flows.plots import plt
from pipelines.store import OutputStore
from scoring import decision_scores
from scoring.calibration import Calibration
from scoring.drift import FiredTest

BAND_COLOUR, REFERENCE_COLOUR, ALERT_COLOUR = "#4c72b0", "#55a868", "#c44e52"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _drift_starts(decisions: list[dict]) -> list[dt.datetime]:
    return [row["window_start"] for row in decisions if row["status"] == "drift"]


def quantile_bands(windows: pa.Table, decisions: list[dict], calibration: Calibration | None) -> bytes:
    """Per score: the window's p05-p95 and p25-p75 bands and median over time, against the reference's."""
    names = decision_scores()
    figure, axes = plt.subplots(len(names), 1, figsize=(11, 2.4 * len(names)), sharex=True, squeeze=False)
    rows = [row for row in windows.to_pylist() if row["n"] > 0]
    alerts = _drift_starts(decisions)
    for axis, name in zip(axes[:, 0], names, strict=True):
        series = sorted((row for row in rows if row["score"] == name), key=lambda row: row["window_start"])
        if not series:
            continue
        # Steps drawn to each window's end, so the last window shows too.
        starts = [row["window_start"] for row in series] + [series[-1]["window_end"]]
        series = [*series, series[-1]]
        axis.fill_between(starts, [r["p05"] for r in series], [r["p95"] for r in series], color=BAND_COLOUR,
                          alpha=0.2, step="post", label="window p05-p95")  # fmt: skip
        axis.fill_between(starts, [r["p25"] for r in series], [r["p75"] for r in series], color=BAND_COLOUR,
                          alpha=0.4, step="post", label="window p25-p75")  # fmt: skip
        axis.step(starts, [r["p50"] for r in series], where="post", color=BAND_COLOUR, label="window median")
        if calibration is not None and name in calibration.references[""]:
            reference = calibration.references[""][name]
            low, high = np.quantile(reference.sample, [0.05, 0.95])
            axis.axhspan(low, high, color=REFERENCE_COLOUR, alpha=0.12, label="reference p05-p95")
            for bound in (reference.lower, reference.upper):
                if bound is not None:
                    axis.axhline(bound, color=REFERENCE_COLOUR, linestyle="--", label="per-image threshold")
        for start in alerts:
            axis.axvline(start, color=ALERT_COLOUR, linewidth=1.5)
        axis.set_ylabel(name)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=3)
    axes[0, 0].set_title("score quantiles per window (red: windows decided as drift)")
    return _png(figure)


def ood_rates(scores: pa.Table, decisions: list[dict], calibration: Calibration | None) -> bytes | None:
    """Per score: share of each window's images past the per-image threshold, against the expected share."""
    if calibration is None or scores.num_rows == 0:
        return None
    names = [name for name in decision_scores() if name in calibration.references[""]]
    starts = np.asarray(scores.column("window_start").to_pylist(), dtype=object)
    windows = sorted(set(starts))
    edges = [*windows, windows[-1] + (windows[1] - windows[0] if len(windows) > 1 else dt.timedelta(hours=1))]
    figure, axis = plt.subplots(figsize=(11, 3.2))
    for name in names:
        reference = calibration.references[""][name]
        outside = reference.is_out_of_distribution(scores.column(name).to_numpy())
        rates = [float(np.mean(outside[starts == start])) for start in windows]
        axis.step(edges, [*rates, rates[-1]], where="post", label=name)
    expected = np.mean([calibration.references[""][name].expected_ood_rate for name in names])
    axis.axhline(expected, color=REFERENCE_COLOUR, linestyle="--", label=f"expected on healthy images ({expected:.0%})")
    for start in _drift_starts(decisions):
        axis.axvline(start, color=ALERT_COLOUR, linewidth=1.5)
    axis.set_ylabel("OOD rate")
    axis.set_title(
        f"images past the per-image threshold (alert rule: {', '.join(calibration.tests)} tests of every score, "
        f"Holm-corrected to alpha={calibration.config.alpha:g} per window)"
    )
    axis.legend(fontsize=7, ncol=5)
    return _png(figure)


def segment_medians(windows: pa.Table, decisions: list[dict], score: str = "msp") -> bytes | None:
    """Small multiples: each segment's median of one score over time."""
    rows = [row for row in windows.to_pylist() if row["score"] == score and row["n"] > 0]
    segments = sorted({row["segment"] for row in rows})
    if not segments:
        return None
    columns = min(4, len(segments))
    lines = (len(segments) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(11, 2.2 * lines), squeeze=False, sharey=True)
    for axis, segment in zip(axes.flat, segments, strict=False):
        series = sorted((row for row in rows if row["segment"] == segment), key=lambda row: row["window_start"])
        axis.step([r["window_start"] for r in series], [r["p50"] for r in series], where="post", color=BAND_COLOUR)
        for start in _drift_starts(decisions):
            axis.axvline(start, color=ALERT_COLOUR, linewidth=1)
        axis.set_title(segment or "(no segment)", fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(segments) :]:
        axis.set_visible(False)
    figure.suptitle(f"median {score} per segment")
    return _png(figure)


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
    windows = store.read_table("windows")
    scores = store.read_table("scores")
    decisions = sorted(read_decisions(store).to_pylist(), key=lambda row: row["window_start"])
    charts = {"quantile_bands.png": quantile_bands(windows, decisions, calibration)}
    for name, chart in (("ood_rates.png", ood_rates(scores, decisions, calibration)),
                        ("segments.png", segment_medians(windows, decisions))):  # fmt: skip
        if chart is not None:
            charts[name] = chart
    page = _html(store.url(), decisions, scores, charts, calibration, images_per_window, _alerts(Outbox(store)))
    return page, charts


def _alerts(outbox: Outbox) -> list[dict]:
    """Every alert in OUT's outbox, delivered or still pending, in time order."""
    delivered = [{**entry["alert"], "delivered_to": len(entry["delivered_to"]), "pending": False}
                 for entry in outbox.delivered()]  # fmt: skip
    pending = [{**entry["alert"], "delivered_to": len(entry["delivered_to"]), "pending": True}
               for _, entry in outbox.pending()]  # fmt: skip
    return sorted(delivered + pending, key=lambda alert: (alert["window"]["start"], alert["kind"]))


def _html(
    out: str,
    decisions: list[dict],
    scores: pa.Table,
    charts: Mapping[str, bytes],
    calibration: Calibration | None,
    images_per_window: int,
    alerts: list[dict],
) -> str:
    escape = html.escape
    alert_rows = "".join(
        f'<tr class="{escape(alert["kind"])}"><td>{escape(alert["window"]["start"][:16])}</td>'
        f"<td>{escape(alert['kind'])}</td><td>{escape(alert['segment'] or '-')}</td>"
        f"<td>{escape(alert['summary'])}</td><td>{'pending' if alert['pending'] else 'delivered'}</td></tr>"
        for alert in alerts
    )
    images = "".join(
        f'<figure class="chart" id="{escape(name.removesuffix(".png"))}"><img alt="{escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in charts.items()
    )
    rows, strips = [], []
    score_rows = scores.to_pylist() if any(row["status"] == "drift" for row in decisions) else []
    for row in decisions:
        start = row["window_start"]
        css = "drift" if row["status"] == "drift" else ("warn" if row["status"] != "ok" else "")
        quality = "passed" if row["data_quality_passed"] else escape(
            ", ".join(f"{f['expectation']}({f.get('column', '')})" for f in json.loads(row["data_quality_failures"]))
        )  # fmt: skip
        rows.append(
            f'<tr class="{css}"><td>{start:%Y-%m-%d %H:%M}</td><td>{escape(row["status"])}</td><td>{row["n"]}</td>'
            f"<td>{row['n_rejected']}</td><td>{escape(', '.join(FiredTest(**f).label for f in row['fired']) or '-')}"
            f"</td><td>{_what_moved(row)}</td><td>{quality}</td></tr>"
        )
        if row["status"] == "drift" and score_rows:
            strips.append(_strip(score_rows, row, images_per_window, calibration))
    threshold = f"thresholds v{escape(decisions[-1]['threshold_version'])}, " if decisions else ""
    model = escape(calibration.model_id if calibration else (decisions[-1]["model_id"] if decisions else "-"))
    drift_count = sum(row["status"] == "drift" for row in decisions)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gradwatch drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
td, th {{ border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; }}
tr.drift {{ background: #f8d7da; }} tr.warn {{ background: #fff3cd; }}
.chart img {{ max-width: 100%; }} .strip img {{ margin: 2px; border: 1px solid #ccc; }}
</style></head><body>
<h1>gradwatch drift report</h1>
<p>{escape(out)} &middot; model {model} &middot; {threshold}{len(decisions)} windows, {drift_count} with drift</p>
<h2>Alerts</h2>
<table id="alerts"><thead><tr><th>window</th><th>kind</th><th>segment</th><th>summary</th><th>delivery</th></tr>
</thead><tbody>{alert_rows or '<tr><td colspan="5">No alerts.</td></tr>'}</tbody></table>
<h2>Charts</h2>{images}
<h2>Windows</h2>
<table id="windows"><thead><tr><th>window</th><th>status</th><th>n</th><th>rejected</th><th>fired</th>
<th>what moved</th><th>data quality</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Images furthest out of distribution in alerted windows</h2>{"".join(strips) or "<p>No drift alerts.</p>"}
</body></html>
"""


def _what_moved(decision_row: Mapping) -> str:
    # Decisions written before tests said what moved carry no such list: those windows show "-".
    moved = json.loads(decision_row["decision"] or "{}").get("what_moved", [])
    return "<br>".join(html.escape(line) for line in moved) or "-"


def _strip(score_rows: list[dict], decision: Mapping, k: int, calibration: Calibration | None) -> str:
    start = decision["window_start"]
    in_window = [row for row in score_rows if row["window_start"] == start]
    fired = [FiredTest(**fired) for fired in decision["fired"]]
    score, extreme = most_out_of_distribution(in_window, fired, k, calibration, fired[0].segment if fired else "")
    thumbs = "".join(
        f'<img src="{src}" title="{html.escape(row["uri"])} {score}={row[score]:.4g}" '
        f'alt="{html.escape(Path(row["uri"]).name)}">'
        for row in extreme
        if (src := thumbnail(row["uri"])) is not None
    )
    return f'<div class="strip"><h3>{start:%Y-%m-%d %H:%M} (by {html.escape(score)})</h3>{thumbs}</div>'


def write_report(out: str, destination: str | None = None, *, registry=None, log_to_mlflow: bool = True) -> str:
    """Render OUT's report to ``destination`` (default ``OUT/report.html``; any local path or fsspec URL), with
    the approved calibration's reference when MLflow has it. Returns where it went.

    The charts are also logged to the latest monitoring run of OUT's decisions when ``log_to_mlflow``.
    """
    from flows.registry import RegistryError

    store = OutputStore(out)
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
