"""PNG plots a threshold reviewer needs, rendered with matplotlib's headless backend."""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from scoring.calibration import Calibration


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def reference_histograms(calibration: Calibration) -> bytes:
    """Each decision score's and image property's reference histogram with its per-image bounds marked."""
    references = {name: calibration.references[""][name] for name in calibration.scalar_scores}
    columns = min(4, len(references))
    rows = -(-len(references) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
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
    return _png(figure)


def validation_plots(calibration: Calibration, validation: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, bytes]:
    """Reference vs each validation set: overlaid histograms and ROC curves, one PNG per set."""
    plots = {}
    # The scores: an image property has no in-distribution direction to draw a ROC curve along.
    references = {name: ref for name, ref in calibration.references[""].items() if ref.side in ("low", "high")}
    for dataset, scores in validation.items():
        figure, axes = plt.subplots(2, len(references), figsize=(4 * len(references), 6.4), squeeze=False)
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
        plots[f"plots/validation_{dataset}.png"] = _png(figure)
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
