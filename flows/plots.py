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


def reference_histograms(calibration: Calibration) -> bytes:
    """Each decision score's and image property's reference histogram with its per-image bounds marked."""
    references = {name: calibration.references[""][name] for name in calibration.scalar_scores}
    columns = min(4, len(references))
    rows = -(-len(references) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False, layout="constrained")
    for axis, (name, reference) in zip(axes.flat, references.items(), strict=False):
        axis.hist(reference.sample, bins=40, color="#4c72b0", alpha=0.85)
        for bound in _bounds(reference):
            axis.axvline(bound, color="#c44e52", linewidth=2, label=f"threshold {bound:.4g}")
        axis.set_title(f"{name} (reference, n={reference.sample.size})")
        axis.set_xlabel(f"{name} ({_IN_DISTRIBUTION[reference.side]})")
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(references) :]:
        axis.set_visible(False)
    figure.suptitle(f"{calibration.model_id}: TPR {calibration.config.tpr:.0%} thresholds")
    return png(figure)


def validation_plots(calibration: Calibration, validation: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, bytes]:
    """Reference vs each validation set: overlaid histograms and ROC curves, one PNG per set."""
    plots = {}
    # The scores: an image property has no in-distribution direction to draw a ROC curve along.
    references = {name: ref for name, ref in calibration.references[""].items() if ref.side in ("low", "high")}
    for dataset, scores in validation.items():
        figure, axes = plt.subplots(
            2, len(references), figsize=(4 * len(references), 6.4), squeeze=False, layout="constrained"
        )
        for column, (name, reference) in enumerate(references.items()):
            shifted = np.asarray(scores[name], np.float64)
            top, bottom = axes[0][column], axes[1][column]
            bins = np.histogram_bin_edges(np.concatenate([reference.sample, shifted]), bins=40)
            top.hist(reference.sample, bins=bins, alpha=0.6, density=True, label="reference")
            top.hist(shifted, bins=bins, alpha=0.6, density=True, label=dataset)
            for bound in _bounds(reference):
                top.axvline(bound, color="#c44e52", linewidth=1.5)
            top.set_title(name)
            top.legend(fontsize=8)
            false_positive, true_positive = _roc(reference.oriented(reference.sample), reference.oriented(shifted))
            entry = next((e for e in calibration.separation if (e.score, e.dataset) == (name, dataset)), None)
            bottom.plot(false_positive, true_positive, label=f"AUROC {entry.auroc:.3f}" if entry else None)
            bottom.plot([0, 1], [0, 1], linestyle=":", color="grey")
            bottom.set_xlabel(f"{dataset} kept as in-distribution (FPR)")
            bottom.set_ylabel("reference kept (TPR)")
            bottom.legend(fontsize=8, loc="lower right")
        figure.suptitle(f"reference vs {dataset}")
        plots[f"plots/validation_{dataset}.png"] = png(figure)
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
