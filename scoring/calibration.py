"""Calibration on healthy reference images: thresholds, references, and a checked false-alarm rate.

The reference is split once: thresholds and reference samples come from the calibration part, and
healthy windows resampled from the held-out part measure the false-alarm rate the decision rule really
has, so what is reported is what was checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from scoring.drift import ScoreReference, WindowDecision, decide_window
from scoring.scores import decision_scores
from scoring.separation import aupr_in, aupr_out, auroc, fpr_at_tpr

CALIBRATION_FORMAT = "gradwatch.calibration/1"
# An AUROC below this on a validation set means the score barely tells that shift from healthy images.
WEAK_AUROC = 0.7


@dataclass(frozen=True)
class CalibrationConfig:
    """How a calibration is made. Defaults follow the OOD literature and a per-window paging budget."""

    # FPR95 operating point: the per-image threshold keeps 95% of healthy images.
    tpr: float = 0.95
    # At most 1 false page per 100 healthy windows, family-wise across tests, scores and segments.
    alpha: float = 0.01
    # Below 50 images a window cannot show a doubled OOD rate at alpha = 1% with useful power.
    min_window: int = 50
    # A segment gets its own reference from this many reference images; others use the global one.
    min_segment_reference: int = 200
    # Held out of calibration to measure the realized false-alarm rate.
    holdout_fraction: float = 0.3
    # Resampled healthy windows per window size in the false-alarm check.
    check_windows: int = 500
    check_window_sizes: tuple[int, ...] = (50, 100, 250)
    # Reference samples above this size are subsampled: KS power saturates and the JSON stays small.
    max_reference_sample: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.tpr < 1:
            raise ValueError(f"tpr must be in (0, 1), got {self.tpr}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.min_window < 1:
            raise ValueError(f"min_window must be at least 1, got {self.min_window}")


@dataclass(frozen=True)
class FalseAlarmCheck:
    """Realized false-alarm rate of the decision rule on healthy held-out windows of one size."""

    window_size: int
    windows: int
    false_alarms: int
    ci_low: float
    ci_high: float

    @property
    def rate(self) -> float:
        return self.false_alarms / self.windows


@dataclass(frozen=True)
class Separation:
    """How well one score separates the reference from one validation set of known-shifted images."""

    score: str
    dataset: str
    auroc: float
    fpr95: float
    aupr_in: float
    aupr_out: float


@dataclass(frozen=True)
class Calibration:
    """A calibration, as monitoring loads it. Serializes to a versioned JSON document."""

    model_id: str
    config: CalibrationConfig
    references: dict[str, dict[str, ScoreReference]]  # segment ("" = global) -> score -> reference
    reference_images: int
    false_alarm_checks: list[FalseAlarmCheck] = field(default_factory=list)
    separation: list[Separation] = field(default_factory=list)
    recommended_score: str | None = None
    warnings: list[str] = field(default_factory=list)
    # The network's precision when the reference was scored: fp16/bf16 shift scores, so thresholds hold for it only.
    precision: str = "fp32"
    # Who decoded the reference's JPEGs: nvJPEG upsamples 4:2:0 chroma unlike libjpeg, moving scores by up to 4%.
    decoder: str = "host"

    @property
    def scores(self) -> list[str]:
        return list(self.references[""])

    def threshold(self, score: str, segment: str = "") -> float:
        return (self.references.get(segment) or self.references[""])[score].threshold

    def decide(self, window: Mapping[str, Mapping[str, np.ndarray]]) -> WindowDecision:
        """The drift decision for a window: segment -> score -> per-image scores."""
        return decide_window(window, self.references, alpha=self.config.alpha, min_window=self.config.min_window)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": CALIBRATION_FORMAT,
                "model_id": self.model_id,
                "precision": self.precision,
                "decoder": self.decoder,
                "config": {**asdict(self.config), "check_window_sizes": list(self.config.check_window_sizes)},
                "reference_images": self.reference_images,
                "references": {
                    segment: {
                        name: {
                            "threshold": ref.threshold,
                            "expected_ood_rate": ref.expected_ood_rate,
                            "sample": ref.sample.tolist(),
                        }
                        for name, ref in scores.items()
                    }
                    for segment, scores in self.references.items()
                },
                "false_alarm_checks": [asdict(check) for check in self.false_alarm_checks],
                "separation": [asdict(entry) for entry in self.separation],
                "recommended_score": self.recommended_score,
                "warnings": self.warnings,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        document = json.loads(text)
        if document.get("format") != CALIBRATION_FORMAT:
            raise ValueError(
                f"not a gradwatch calibration of format {CALIBRATION_FORMAT!r} (got {document.get('format')!r}); "
                "recalibrate with this version of gradwatch"
            )
        config = CalibrationConfig(
            **{**document["config"], "check_window_sizes": tuple(document["config"]["check_window_sizes"])}
        )
        references = {
            segment: {
                name: ScoreReference(name, ref["threshold"], ref["expected_ood_rate"], np.asarray(ref["sample"]))
                for name, ref in scores.items()
            }
            for segment, scores in document["references"].items()
        }
        return cls(
            model_id=document["model_id"],
            # Calibrations written before precision was recorded were all scored in fp32.
            precision=document.get("precision", "fp32"),
            # ... and decoded on the host.
            decoder=document.get("decoder", "host"),
            config=config,
            references=references,
            reference_images=document["reference_images"],
            false_alarm_checks=[FalseAlarmCheck(**check) for check in document["false_alarm_checks"]],
            separation=[Separation(**entry) for entry in document["separation"]],
            recommended_score=document["recommended_score"],
            warnings=document["warnings"],
        )


def score_reference(score: str, values: np.ndarray, tpr: float) -> ScoreReference:
    """Threshold at ``tpr``: the largest value with at least ``tpr`` of the reference at or above it."""
    ordered = np.sort(np.asarray(values, np.float64))
    if ordered.size == 0 or not np.isfinite(ordered).all():
        raise ValueError(f"reference scores of {score!r} must be non-empty and finite")
    threshold = float(ordered[math.floor(ordered.size * (1 - tpr) + 1e-9)])
    return ScoreReference(score, threshold, float(np.mean(ordered < threshold)), ordered)


def calibrate(
    reference: Mapping[str, np.ndarray],
    *,
    model_id: str,
    segments: Sequence[str] | None = None,
    validation: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    primary_score: str = "gradnorm",
    config: CalibrationConfig = CalibrationConfig(),
    precision: str = "fp32",
    decoder: str = "host",
) -> Calibration:
    """Calibrate thresholds and references on healthy images, and check the false-alarm rate.

    Args:
        reference: score name -> per-image scores of the reference images (all the same length).
        model_id: the model that produced them; monitoring refuses any other.
        segments: per-image segment, when segments should get references of their own.
        validation: dataset name -> score name -> scores of known-shifted images, for the guardrail.
        primary_score: the score the operator leads with; a warning says when it is weak.
        config: see :class:`CalibrationConfig`.
        precision: the network's precision when the scores were computed; monitoring refuses any other.
        decoder: where the images were decoded ("host" or "device"); monitoring refuses any other.

    Returns:
        The calibration, with its false-alarm check and, given validation sets, the separation table.
    """
    names = [name for name in decision_scores() if name in reference]
    if not names:
        raise ValueError(f"reference has none of the decision scores {decision_scores()}; pass the scores table")
    count = len(reference[names[0]])
    if any(len(reference[name]) != count for name in names):
        raise ValueError("every score of the reference must have one value per image")
    minimum = 2 * config.min_window
    if count < minimum:
        raise ValueError(
            f"{count} reference images are too few: at least {minimum} (twice min_window) are needed to "
            "calibrate and check; score more healthy images"
        )
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(count)
    holdout_size = max(config.min_window, round(count * config.holdout_fraction))
    held_out, calibration_part = order[:holdout_size], order[holdout_size:]
    columns = {name: np.asarray(reference[name], np.float64) for name in names}
    segment_of = np.asarray(segments if segments is not None else [""] * count, dtype=object)

    def references_for(indices: np.ndarray) -> dict[str, ScoreReference]:
        if indices.size > config.max_reference_sample:
            indices = rng.choice(indices, config.max_reference_sample, replace=False)
        return {name: score_reference(name, columns[name][indices], config.tpr) for name in names}

    references = {"": references_for(calibration_part)}
    for segment in sorted(set(segment_of[calibration_part]) - {""}):
        members = calibration_part[segment_of[calibration_part] == segment]
        if members.size >= config.min_segment_reference:
            references[segment] = references_for(members)

    checks = _false_alarm_checks(columns, held_out, references, config, rng)
    separation = _separation(references[""], validation or {})
    recommended, warnings = _guardrail(separation, primary_score)
    unchecked = sorted(set(config.check_window_sizes) - {check.window_size for check in checks})
    if unchecked:
        warnings.append(
            f"window sizes {unchecked} exceed the {held_out.size} held-out images and were not checked; "
            "calibrate on more images to check them"
        )
    for check in checks:
        if check.ci_low > 2 * config.alpha:
            warnings.append(
                f"realized false-alarm rate {check.rate:.3f} at window size {check.window_size} exceeds twice "
                f"alpha={config.alpha}: the reference may not represent production; calibrate on more images"
            )
    return Calibration(
        model_id, config, references, count, checks, separation, recommended, warnings, precision, decoder
    )


def _false_alarm_checks(
    columns: Mapping[str, np.ndarray],
    held_out: np.ndarray,
    references: Mapping[str, Mapping[str, ScoreReference]],
    config: CalibrationConfig,
    rng: np.random.Generator,
) -> list[FalseAlarmCheck]:
    checks = []
    for size in config.check_window_sizes:
        if size > held_out.size:
            continue  # reported by its absence; calibrate() warns
        alarms = 0
        for _ in range(config.check_windows):
            # Without replacement: a random subset of an iid sample is an iid sample, as a production window
            # is. Drawing with replacement repeats images, which KS sees as a distribution of its own.
            picked = rng.choice(held_out, size, replace=False)
            window = {"": {name: values[picked] for name, values in columns.items()}}
            alarms += decide_window(window, {"": references[""]}, alpha=config.alpha, min_window=1).is_drift
        interval = stats.binomtest(alarms, config.check_windows).proportion_ci(method="wilson")
        checks.append(FalseAlarmCheck(size, config.check_windows, alarms, interval.low, interval.high))
    return checks


def _separation(
    references: Mapping[str, ScoreReference], validation: Mapping[str, Mapping[str, np.ndarray]]
) -> list[Separation]:
    table = []
    for dataset, scores in validation.items():
        for name, reference in references.items():
            shifted = np.asarray(scores[name], np.float64)
            table.append(
                Separation(
                    name,
                    dataset,
                    auroc(reference.sample, shifted),
                    fpr_at_tpr(reference.sample, shifted),
                    aupr_in(reference.sample, shifted),
                    aupr_out(reference.sample, shifted),
                )
            )
    return table


def _guardrail(separation: Sequence[Separation], primary_score: str) -> tuple[str | None, list[str]]:
    """Recommend the score with the best worst-case AUROC; warn when the primary score is weak."""
    if not separation:
        return None, []
    worst: dict[str, float] = {}
    for entry in separation:
        worst[entry.score] = min(worst.get(entry.score, 1.0), entry.auroc)
    recommended = max(worst, key=worst.get)
    warnings = []
    for entry in separation:
        if entry.score == primary_score and entry.auroc < WEAK_AUROC:
            warnings.append(
                f"{primary_score} is weak on {entry.dataset} (AUROC {entry.auroc:.3f} < {WEAK_AUROC}); "
                f"{recommended} does best there in the worst case (AUROC {worst[recommended]:.3f}). "
                "Every decision still tests all scores."
            )
    if primary_score in worst and worst[recommended] - worst[primary_score] > 0.05 and not warnings:
        warnings.append(
            f"{recommended} separates the validation sets better than {primary_score} "
            f"(worst-case AUROC {worst[recommended]:.3f} vs {worst[primary_score]:.3f})"
        )
    return recommended, warnings


def calibration_summary(calibration: Calibration) -> dict[str, Any]:
    """Flat metrics for a tracking system: thresholds, reference quantiles, false-alarm rates, AUROCs."""
    metrics: dict[str, Any] = {}
    for name, reference in calibration.references[""].items():
        metrics[f"threshold_{name}"] = reference.threshold
        metrics[f"expected_ood_rate_{name}"] = reference.expected_ood_rate
        for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99):
            metrics[f"reference_{name}_p{round(q * 100):02d}"] = float(np.quantile(reference.sample, q))
    for check in calibration.false_alarm_checks:
        metrics[f"false_alarm_rate_n{check.window_size}"] = check.rate
    for entry in calibration.separation:
        metrics[f"auroc_{entry.score}_{entry.dataset}"] = entry.auroc
        metrics[f"fpr95_{entry.score}_{entry.dataset}"] = entry.fpr95
    return metrics
