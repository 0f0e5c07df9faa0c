"""PNG plots a threshold reviewer needs, rendered with matplotlib's headless backend, and the time axis every
chart over windows shares."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scoring.calibration import Calibration

# The one way a time is written in the report, in its tables, captions and chart axes alike.
TIME_FORMAT = "%Y-%m-%d %H:%M UTC"


def png(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open one alive)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def format_time(when: dt.datetime | None) -> str:
    """``when`` in :data:`TIME_FORMAT`; ``unknown`` for a rejection whose event time could not be read."""
    return "unknown" if when is None else when.astimezone(dt.UTC).strftime(TIME_FORMAT)


def staircase(
    spans: Sequence[tuple[dt.datetime, dt.datetime]], values: Sequence[float] | np.ndarray
) -> tuple[list[dt.datetime], np.ndarray]:
    """Vertices of each window's value held from its start to its end, for ``plot`` and ``fill_between``.

    The last window is drawn to its end, not only marked at its start; between windows that do not touch (an empty
    window, or one without the value) a NaN vertex breaks the line, so a gap reads as a gap. ``values`` may be
    (windows,) or (windows, series).
    """
    values = np.asarray(values, np.float64)
    order = sorted(range(len(spans)), key=lambda index: spans[index][0])
    times: list[dt.datetime] = []
    heights: list[np.ndarray] = []
    for index in order:
        start, end = spans[index]
        if times and start != times[-1]:
            times.append(times[-1])
            heights.append(np.full_like(values[index], np.nan))
        times += [start, end]
        heights += [values[index], values[index]]
    return times, np.asarray(heights)


def time_axis(axis: Axes, start: dt.datetime, end: dt.datetime, *, ticks: int = 7) -> None:
    """A UTC time axis over [start, end), every window on it whether or not it had images, labelled in
    :data:`TIME_FORMAT` (rotated: the labels are long, and overlapping ones would be unreadable)."""
    axis.set_xlim(start, end)
    axis.xaxis.set_major_locator(mdates.AutoDateLocator(tz=dt.UTC, minticks=2, maxticks=ticks))
    axis.xaxis.set_major_formatter(mdates.DateFormatter(TIME_FORMAT, tz=dt.UTC))
    axis.tick_params(axis="x", labelrotation=30)
    for label in axis.get_xticklabels():
        label.set_horizontalalignment("right")


def score_plots(calibration: Calibration, validation: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, bytes]:
    """One PNG per decision score and image property, ``plots/<name>.png``: the reference's histogram with the
    per-image bound(s) marked and each validation set overlaid, and beside it, for a score, each set's ROC curve.

    One figure per value, not one strip of every value: a reviewer opens the score they are asked about, and each
    panel is wide enough to read its tail, where the threshold sits.
    """
    plots = {}
    for name in calibration.scalar_scores:
        reference = calibration.reference(name)
        shifted = {dataset: np.asarray(scores[name], np.float64) for dataset, scores in validation.items()}
        has_roc = bool(shifted) and reference.side in ("low", "high")  # an image property has no ROC direction
        figure, axes = plt.subplots(
            1, 2 if has_roc else 1, figsize=(11 if has_roc else 6.5, 4.2), squeeze=False, layout="constrained"
        )
        histogram = axes[0][0]
        bins = np.histogram_bin_edges(np.concatenate([reference.sample, *shifted.values()]), bins=50)
        histogram.hist(reference.sample, bins=bins, density=True, alpha=0.75, color="#4c72b0", label="reference")
        for dataset, values in shifted.items():
            histogram.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8, label=dataset)
        for bound in _bounds(reference):
            histogram.axvline(bound, color="#c44e52", linewidth=2, label=f"bound {bound:.4g}")
        histogram.set_title(f"{name}: reference n={reference.sample.size}, TPR {calibration.config.tpr:.0%}")
        histogram.set_xlabel(f"{name} ({_IN_DISTRIBUTION[reference.side]})")
        histogram.set_ylabel("density")
        histogram.legend(fontsize=8)
        if has_roc:
            roc = axes[0][1]
            for dataset, values in shifted.items():
                false_positive, true_positive = _roc(reference.oriented(reference.sample), reference.oriented(values))
                entry = next((e for e in calibration.separation if (e.score, e.dataset) == (name, dataset)), None)
                roc.plot(
                    false_positive, true_positive, label=f"{dataset}: AUROC {entry.auroc:.3f}" if entry else dataset
                )
            roc.plot([0, 1], [0, 1], linestyle=":", color="grey")
            roc.set_title(f"{name}: reference vs each validation set")
            roc.set_xlabel("shifted images kept as in-distribution (FPR)")
            roc.set_ylabel("reference images kept (TPR)")
            roc.legend(fontsize=8, loc="lower right")
        plots[f"plots/{name}.png"] = png(figure)
    return plots


_IN_DISTRIBUTION = {"low": "higher = in distribution", "high": "lower = in distribution", "both": "between = in"}


def _bounds(reference) -> list[float]:
    return [bound for bound in (reference.lower, reference.upper) if bound is not None]


def _roc(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points of scores oriented so that higher is in distribution."""
    thresholds = np.unique(np.concatenate([in_scores, out_scores]))[::-1]
    true_positive = (in_scores[None, :] >= thresholds[:, None]).mean(axis=1)
    false_positive = (out_scores[None, :] >= thresholds[:, None]).mean(axis=1)
    return np.r_[0.0, false_positive, 1.0], np.r_[0.0, true_positive, 1.0]
