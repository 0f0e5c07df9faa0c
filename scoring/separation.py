"""How well a score separates in-distribution from shifted images: AUROC, FPR at a target TPR, AUPR.

Scores are read with in-distribution high: callers orient a score that is low in distribution first
(``ScoreReference.oriented``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _checked(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    in_scores, out_scores = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if in_scores.size == 0 or out_scores.size == 0:
        raise ValueError("both in-distribution and shifted scores are needed; one set is empty")
    if not (np.isfinite(in_scores).all() and np.isfinite(out_scores).all()):
        raise ValueError("scores must be finite; drop or fix NaN/inf scores before measuring separation")
    return in_scores, out_scores


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(in > out) + P(in = out)/2: 1 separates perfectly, 0.5 is chance (Mann-Whitney U / n_in·n_out)."""
    in_scores, out_scores = _checked(in_scores, out_scores)
    ranks = rankdata(np.concatenate([in_scores, out_scores]))
    u_statistic = ranks[: in_scores.size].sum() - in_scores.size * (in_scores.size + 1) / 2
    return float(u_statistic / (in_scores.size * out_scores.size))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of shifted images kept as in-distribution by the highest threshold that keeps ``tpr`` of the
    in-distribution ones (FPR95 at the default)."""
    in_scores, out_scores = _checked(in_scores, out_scores)
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    ordered = np.sort(in_scores)
    threshold = ordered[int(np.floor(in_scores.size * (1 - tpr) + 1e-9))]
    return float(np.mean(out_scores >= threshold))


def average_precision(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Area under the precision-recall curve, as average precision, ranking higher scores as positive."""
    positive_scores, negative_scores = _checked(positive_scores, negative_scores)
    scores = np.concatenate([positive_scores, negative_scores])
    labels = np.concatenate([np.ones(positive_scores.size), np.zeros(negative_scores.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Tied scores form one threshold: take precision and recall at the last element of each tie group.
    last_of_ties = np.r_[np.diff(scores) != 0, True]
    true_positives = np.cumsum(labels)[last_of_ties]
    predicted = (np.arange(1, scores.size + 1))[last_of_ties]
    recall_gain = np.diff(np.r_[0.0, true_positives]) / positive_scores.size
    return float(np.sum(recall_gain * true_positives / predicted))


def aupr_in(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUPR with in-distribution images as the positive class (OpenOOD's AUPR-In)."""
    return average_precision(in_scores, out_scores)


def aupr_out(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUPR with shifted images as the positive class, ranked by the negated score (AUPR-Out)."""
    return average_precision(-np.asarray(out_scores, np.float64), -np.asarray(in_scores, np.float64))
