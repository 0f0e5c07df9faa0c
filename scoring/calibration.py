"""Calibration on healthy reference images: thresholds, fitted window tests, and a checked false-alarm rate.

The reference is split once: thresholds, reference samples and every window test's fitted state come from the
calibration part, and healthy windows resampled from the held-out part measure the false-alarm rate the decision
rule really has, so what is reported is what was checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

from scoring.accuracy import CONFIDENCE, MIN_LABELLED, AccuracyModel, fit_accuracy
from scoring.drift import SequentialState, TestRecord, WindowDecision, decide_window
from scoring.features import FEATURES
from scoring.properties import registered_properties
from scoring.references import ScoreReference, Side, ValueKind, score_reference, unbounded_reference
from scoring.scores import decision_scores, registered_scores
from scoring.separation import aupr_in, aupr_out, auroc, fpr_at_tpr
from scoring.sequential import ChartStep, Cusum, fit_cusum, window_evidence
from scoring.settings import RECORDED_BEFORE
from scoring.severity import Severity, SeverityPolicy
from scoring.window_tests import registered_window_tests, window_test

CALIBRATION_FORMAT = "gradwatch.calibration/2"
# Format 1, written before window tests were registered, tested KS and the beta-binomial test (named "binomial").
_FORMAT_1 = "gradwatch.calibration/1"
_FORMAT_1_TESTS = ("beta_binomial", "ks")  # in the registry's order, as a new calibration fits them
# An AUROC below this on a validation set means the score barely tells that shift from healthy images.
WEAK_AUROC = 0.7
# The lead without validation sets to choose one: the score gradwatch is built on (Huang, Geng, Li, NeurIPS 2021).
# With them the guardrail's pick leads, so a calibration never warns against its own default.
DEFAULT_LEAD_SCORE = "gradnorm"


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
    # The features' and predictions' reference samples are at most this large: a permutation costs (n + m)² for
    # the kernel test, and a two-sample test's power is bounded by n·m / (n + m), which m = 500 brings within 17%
    # of an infinite reference's at windows of 100.
    max_permutation_sample: int = 500
    # Share of the reference that fitted scores (ViM) and the feature projection learn from (at most max_fit_images):
    # those images are left out of thresholds and the false-alarm check, since a fitted score looks healthier on what
    # it learned from, and features look closer to the reference on the axes fitted to them.
    fit_share: float = 0.3
    max_fit_images: int = 2_000
    # Sequential detection: the CUSUM's allowance per window, and the mean healthy windows between its false
    # signals (1000 hourly windows: six weeks, a tenth more pages than alpha = 1% per window allows).
    sequential_drift: float = 1.0
    sequential_run_length: int = 1000
    # Windows that set each chart's baseline before it accumulates: a day of hourly windows.
    sequential_burn_in: int = 24
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
        if not 0 < self.fit_share < 1:
            raise ValueError(f"fit_share must be in (0, 1), got {self.fit_share}")
        if self.sequential_run_length < 10:
            raise ValueError(f"sequential_run_length must be at least 10 windows, got {self.sequential_run_length}")

    def fits_on(self, images: Iterable[str]) -> set[str]:
        """The images fitted scores learn from, of those named (by URI): ``fit_share`` of them, chosen by the hashes
        of their names below the folder they share, so that every process and every run on the same reference, and
        the same reference copied elsewhere, picks the same ones."""
        names = sorted(set(images))
        # By characters, cut back to the last "/": commonpath would fold the "//" of s3:// and gs:// URLs.
        shared = os.path.commonprefix(names)  # noqa: RUF071
        root = len(shared[: shared.rfind("/") + 1])
        ordered = sorted(names, key=lambda name: hashlib.sha256(name[root:].encode()).digest())
        return set(ordered[: min(self.max_fit_images, round(len(ordered) * self.fit_share))])


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
class AccuracyCheck:
    """How far the estimated accuracy fell from the true one on labelled held-out healthy windows of one size."""

    window_size: int
    windows: int
    mean_absolute_error: float
    coverage: float  # share of windows whose 95% interval held the true accuracy


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
    # The score alerts and reviews lead with (every score is tested alike); see calibrate's primary_score.
    lead_score: str = DEFAULT_LEAD_SCORE
    # The settings that move scores (ScoringSettings.recorded()): thresholds hold for windows scored with them only;
    # and the backend, recorded for reviewers (RECORDED_ONLY).
    scoring: dict[str, Any] = field(default_factory=lambda: dict(RECORDED_BEFORE))
    # What each score fitted on the reference learned there; monitoring computes those scores with it.
    fitted_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Accuracy without labels (None: a calibration made before it, or one without MSP); its held-out check.
    accuracy: AccuracyModel | None = None
    accuracy_checks: list[AccuracyCheck] = field(default_factory=list)
    # The segments with references of their own, each with its own accuracy model.
    segment_accuracy: dict[str, AccuracyModel] = field(default_factory=dict)
    # The CUSUM across windows (None: a calibration made before it); the severity of drifts.
    sequential: Cusum | None = None
    severity: SeverityPolicy = field(default_factory=SeverityPolicy)

    @property
    def scores(self) -> list[str]:
        """Every value windows are tested on: scores, image properties, and the features and predictions."""
        return list(self.references[""])

    @property
    def scalar_scores(self) -> list[str]:
        """The values with one number per image and per-image bounds: the scores and the image properties."""
        return [name for name, reference in self.references[""].items() if reference.kind == "scalar"]

    @property
    def tests(self) -> list[str]:
        """The window tests windows are decided with (each on the values it applies to)."""
        return list(dict.fromkeys(test for reference in self.references[""].values() for test in reference.tests))

    def reference(self, score: str, segment: str = "") -> ScoreReference:
        return (self.references.get(segment) or self.references[""])[score]

    def threshold(self, score: str, segment: str = "") -> float:
        return self.reference(score, segment).threshold

    def decide(self, window: Mapping[str, Mapping[str, np.ndarray]]) -> WindowDecision:
        """The drift decision for a window: segment -> score -> per-image scores, with each tested segment's
        estimated accuracy and each drifted segment's severity."""
        decision = decide_window(window, self.references, alpha=self.config.alpha, min_window=self.config.min_window)
        accuracy = {}
        for segment in decision.n:
            # A segment with a reference of its own has its own confidence and accuracy: against the feed's, a
            # night camera's healthy windows would read as a standing loss.
            model = self.segment_accuracy.get(segment, self.accuracy)
            values = window[segment].get(CONFIDENCE)
            tested = segment not in decision.insufficient_segments
            if model is not None and tested and values is not None and len(values):
                accuracy[segment] = model.estimate(values)
        return self._with_severity(replace(decision, accuracy=accuracy))

    def with_sequential(self, decision: WindowDecision, steps: Mapping[str, ChartStep]) -> WindowDecision:
        """The decision with each segment's CUSUM charts after it: a segment whose chart signalled has drifted
        (a ``cusum`` record fires for it), even when no test of this window alone did."""
        if self.sequential is None:
            return decision
        limit = self.sequential.limit
        records = list(decision.tests)
        states = {}
        for segment, step in steps.items():
            states[segment] = SequentialState(
                step.statistic, limit, step.signalled, step.chart, step.windows, step.burning_in
            )
            if step.signalled:
                score, _, test = step.chart.rpartition("/")
                # A chart has no p-value of its own; what stands for one is its rate of false signals per healthy
                # window, and the threshold its statistic crossed is the limit.
                records.append(
                    TestRecord(
                        "cusum", score, segment, step.statistic, 1 / self.sequential.run_length, limit, True,
                        f"slow drift: {test} of {score} has run above its healthy level, window after window "
                        f"(CUSUM {step.statistic:.1f} over its limit {limit:.1f})",
                    )
                )  # fmt: skip
        status = "drift" if any(record.is_drift for record in records) else decision.status
        return self._with_severity(replace(decision, tests=records, sequential=states, status=status))

    def _with_severity(self, decision: WindowDecision) -> WindowDecision:
        severity: dict[str, Severity] = {}
        for segment in decision.n:
            fired = {test.score for test in decision.fired_in(segment)}
            if fired:
                severity[segment] = self.severity.assess(
                    fired=sorted(fired),
                    effects=[effect for effect in decision.effects if effect.segment == segment],
                    accuracy=decision.accuracy.get(segment),
                )
        return replace(decision, severity=severity)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": CALIBRATION_FORMAT,
                "model_id": self.model_id,
                "scoring": self.scoring,
                "config": {**asdict(self.config), "check_window_sizes": list(self.config.check_window_sizes)},
                "reference_images": self.reference_images,
                "references": {
                    segment: {name: reference.to_dict() for name, reference in scores.items()}
                    for segment, scores in self.references.items()
                },
                "fitted_scores": self.fitted_scores,
                "false_alarm_checks": [asdict(check) for check in self.false_alarm_checks],
                "separation": [asdict(entry) for entry in self.separation],
                "recommended_score": self.recommended_score,
                "lead_score": self.lead_score,
                "warnings": self.warnings,
                "accuracy": self.accuracy.to_dict() if self.accuracy else None,
                "segment_accuracy": {segment: model.to_dict() for segment, model in self.segment_accuracy.items()},
                "accuracy_checks": [asdict(check) for check in self.accuracy_checks],
                "sequential": self.sequential.to_dict() if self.sequential else None,
                "severity": self.severity.to_dict(),
            },
            allow_nan=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Read a calibration document of this format, or of format 1, whose tests are fitted again as they were."""
        document = json.loads(text)
        found = document.get("format")
        if found not in (CALIBRATION_FORMAT, _FORMAT_1):
            raise ValueError(
                f"not a gradwatch calibration of format {CALIBRATION_FORMAT!r} (got {found!r}); "
                "recalibrate with this version of gradwatch"
            )
        known = {option.name for option in dataclasses.fields(CalibrationConfig)}
        config = CalibrationConfig(
            **{key: value for key, value in document["config"].items() if key in known and key != "check_window_sizes"},
            check_window_sizes=tuple(document["config"]["check_window_sizes"]),
        )
        references = {
            segment: {name: ScoreReference.from_dict(name, entry) for name, entry in scores.items()}
            for segment, scores in document["references"].items()
        }
        if found == _FORMAT_1:
            references = {
                segment: {name: fit_tests(reference, _FORMAT_1_TESTS) for name, reference in scores.items()}
                for segment, scores in references.items()
            }
        # Format 1 kept precision and decoder at the top level, or (earlier still) not at all.
        scoring = document.get("scoring") or {name: document[name] for name in RECORDED_BEFORE if name in document}
        return cls(
            model_id=document["model_id"],
            config=config,
            references=references,
            reference_images=document["reference_images"],
            false_alarm_checks=[FalseAlarmCheck(**check) for check in document["false_alarm_checks"]],
            separation=[Separation(**entry) for entry in document["separation"]],
            recommended_score=document["recommended_score"],
            lead_score=document.get("lead_score", DEFAULT_LEAD_SCORE),
            warnings=document["warnings"],
            scoring={**RECORDED_BEFORE, **scoring},
            fitted_scores=document.get("fitted_scores", {}),
            # Documents written before accuracy, sequential detection and severity decide as they did.
            accuracy=AccuracyModel.from_dict(document["accuracy"]) if document.get("accuracy") else None,
            segment_accuracy={
                segment: AccuracyModel.from_dict(entry)
                for segment, entry in (document.get("segment_accuracy") or {}).items()
            },
            accuracy_checks=[AccuracyCheck(**check) for check in document.get("accuracy_checks", [])],
            sequential=Cusum.from_dict(document["sequential"]) if document.get("sequential") else None,
            severity=SeverityPolicy.from_dict(document.get("severity")),
        )


def fit_tests(reference: ScoreReference, tests: Iterable[str]) -> ScoreReference:
    """The reference with each named window test that applies to it (to its kind of value, and by its fit) fitted."""
    fitted = {name: window_test(name).fit(reference) for name in tests if reference.kind in window_test(name).kinds}
    return replace(reference, tests={name: state for name, state in fitted.items() if state is not None})


def calibrate(
    reference: Mapping[str, np.ndarray],
    *,
    model_id: str,
    segments: Sequence[str] | None = None,
    validation: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    primary_score: str | None = None,
    config: CalibrationConfig = CalibrationConfig(),
    scoring: Mapping[str, Any] | None = None,
    fitted_scores: Mapping[str, dict[str, Any]] | None = None,
    tests: Sequence[str] | None = None,
    correct: Sequence[float] | np.ndarray | None = None,
    severity: SeverityPolicy = SeverityPolicy(),
) -> Calibration:
    """Calibrate thresholds and references on healthy images, and check the false-alarm rate.

    Args:
        reference: score name -> per-image scores of the reference images (all the same length).
        model_id: the model that produced them; monitoring refuses any other.
        segments: per-image segment, when segments should get references of their own.
        validation: dataset name -> score name -> scores of known-shifted images, for the guardrail.
        primary_score: the score the operator leads with; a warning says when it is weak. None: the guardrail's
            recommendation when ``validation`` is given, else :data:`DEFAULT_LEAD_SCORE`.
        config: see :class:`CalibrationConfig`.
        scoring: the score-defining settings the reference was scored with (``ScoringSettings.recorded()``);
            monitoring refuses windows scored otherwise. Default: the defaults.
        fitted_scores: what fitted scores learned on the fit part of the reference, which ``reference`` must not
            include (see :meth:`CalibrationConfig.fits_on`).
        tests: the window tests to fit on every score; default: every registered one.
        correct: per reference image, 1.0 when the model's prediction matches its label, 0.0 when not, NaN when
            it has none; None: no labels (accuracy's fall is still estimated, not the accuracy itself).
        severity: when a drift pages rather than warns.

    Returns:
        The calibration, with its false-alarm check and, given validation sets, the separation table.
    """
    columns = _decision_columns(reference, config)
    count = len(next(iter(columns.values())))
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(count)
    holdout_size = max(config.min_window, round(count * config.holdout_fraction))
    held_out, calibration_part = order[:holdout_size], order[holdout_size:]
    segment_of = np.asarray(segments if segments is not None else [""] * count, dtype=object)
    tests = list(tests if tests is not None else registered_window_tests())
    if not tests:
        raise ValueError("no window tests to fit: name at least one, or pass tests=None for every registered one")
    references = {"": _fitted_references(columns, calibration_part, tests, config, rng)}
    for segment in sorted(set(segment_of[calibration_part]) - {""}):
        members = calibration_part[segment_of[calibration_part] == segment]
        if members.size >= config.min_segment_reference:
            references[segment] = _fitted_references(columns, members, tests, config, rng)
    labels = None if correct is None else np.asarray(correct, np.float64)
    if labels is not None and labels.shape != (count,):
        raise ValueError(f"correct has {labels.size} entries for {count} reference images: one per image")
    accuracy, segment_accuracy = None, {}
    if CONFIDENCE in columns:
        part_labels = None if labels is None else labels[calibration_part]
        accuracy = fit_accuracy(columns[CONFIDENCE][calibration_part], part_labels, seed=config.seed)
        for segment in set(references) - {""}:
            members = calibration_part[segment_of[calibration_part] == segment]
            known = None if labels is None else labels[members]
            if known is not None and np.isfinite(known).sum() < MIN_LABELLED:
                known = None  # too few of its images labelled: its fall in confidence is still its own
            segment_accuracy[segment] = fit_accuracy(columns[CONFIDENCE][members], known, seed=config.seed)
    checks, null, accuracy_checks = _false_alarm_checks(
        columns, held_out, references, config, rng, accuracy=accuracy, labels=labels
    )
    sequential = None
    if null.shape[0] >= 2 and null.shape[1]:
        sequential = fit_cusum(
            null, drift=config.sequential_drift, burn_in=config.sequential_burn_in,
            target_run_length=config.sequential_run_length, seed=config.seed,
        )  # fmt: skip
    if sequential is not None and sequential.run_length < sequential.target_run_length:
        warnings_sequential = [
            f"the CUSUM reaches a mean run length of {sequential.run_length:.0f} windows at most, not the "
            f"{sequential.target_run_length} asked for: it will signal falsely more often; lower sequential_run_length"
        ]
    else:
        warnings_sequential = []
    separation = _separation(references[""], validation or {})
    recommended, warnings = _guardrail(separation, primary_score)
    lead = primary_score or recommended or DEFAULT_LEAD_SCORE
    warnings += _check_warnings(checks, config, held_out.size) + warnings_sequential
    return Calibration(
        model_id=model_id,
        config=config,
        references=references,
        reference_images=count,
        false_alarm_checks=checks,
        separation=separation,
        recommended_score=recommended,
        lead_score=lead,
        warnings=warnings,
        scoring={**RECORDED_BEFORE, **(scoring or {})},
        fitted_scores=dict(fitted_scores or {}),
        accuracy=accuracy,
        accuracy_checks=accuracy_checks,
        segment_accuracy=segment_accuracy,
        sequential=sequential,
        severity=severity,
    )


# The predicted class, a value of every scores table.
PREDICTION = "pred"


def decision_sides() -> dict[str, Side]:
    """Every value a decision may test, and where its out-of-distribution side is: the decision scores by their
    direction, the image properties on both sides, the features and predictions on none (no image alone is out of
    distribution by them; a window's mix of them is)."""
    scores = registered_scores()
    sides: dict[str, Side] = {
        name: "low" if scores[name].higher_is_in_distribution else "high" for name in decision_scores()
    }
    return {**sides, **dict.fromkeys(registered_properties(), "both"), FEATURES: "none", PREDICTION: "none"}


def value_kind(name: str) -> ValueKind:
    """What one image's value of a decision value is."""
    return {FEATURES: "vector", PREDICTION: "categorical"}.get(name, "scalar")


def _decision_columns(reference: Mapping[str, np.ndarray], config: CalibrationConfig) -> dict[str, np.ndarray]:
    """The reference's decision scores and image properties, each one value per image (a property NaN where it
    does not apply), and enough images to calibrate and check."""
    names = [name for name in decision_sides() if name in reference]
    if not any(value_kind(name) == "scalar" for name in names):
        raise ValueError(
            f"reference has none of the decision scores {decision_scores()} nor image properties; pass the scores table"
        )
    count = len(reference[names[0]])
    if any(len(reference[name]) != count for name in names):
        raise ValueError("every score of the reference must have one value per image")
    minimum = 2 * config.min_window
    if count < minimum:
        raise ValueError(
            f"{count} reference images are too few: at least {minimum} (twice min_window) are needed to "
            "calibrate and check; score more healthy images"
        )
    return {
        name: np.asarray(reference[name], np.int64 if value_kind(name) == "categorical" else np.float64)
        for name in names
    }


def _fitted_references(
    columns: Mapping[str, np.ndarray],
    indices: np.ndarray,
    tests: Sequence[str],
    config: CalibrationConfig,
    rng: np.random.Generator,
) -> dict[str, ScoreReference]:
    """Each value's reference on these images, bounded on its out-of-distribution side, with every test fitted."""
    if indices.size > config.max_reference_sample:
        indices = rng.choice(indices, config.max_reference_sample, replace=False)
    sides = decision_sides()
    references = {}
    for name, values in columns.items():
        chosen = values[indices]
        if sides[name] == "none":
            chosen = chosen[: config.max_permutation_sample]  # the indices are in random order already
            references[name] = fit_tests(unbounded_reference(name, chosen, value_kind(name)), tests)
            continue
        if sides[name] == "both":  # an image property: on the images it applies to, when they are enough
            chosen = chosen[np.isfinite(chosen)]
            if chosen.size < config.min_window:
                continue
        references[name] = fit_tests(score_reference(name, chosen, config.tpr, side=sides[name]), tests)
    return references


def _check_warnings(checks: Sequence[FalseAlarmCheck], config: CalibrationConfig, held_out: int) -> list[str]:
    warnings = []
    unchecked = sorted(set(config.check_window_sizes) - {check.window_size for check in checks})
    if unchecked:
        warnings.append(
            f"window sizes {unchecked} exceed the {held_out} held-out images and were not checked; "
            "calibrate on more images to check them"
        )
    for check in checks:
        if check.ci_low > 2 * config.alpha:
            warnings.append(
                f"realized false-alarm rate {check.rate:.3f} at window size {check.window_size} exceeds twice "
                f"alpha={config.alpha}: the reference may not represent production; calibrate on more images"
            )
    return warnings


def _false_alarm_checks(
    columns: Mapping[str, np.ndarray],
    held_out: np.ndarray,
    references: Mapping[str, Mapping[str, ScoreReference]],
    config: CalibrationConfig,
    rng: np.random.Generator,
    *,
    accuracy: AccuracyModel | None = None,
    labels: np.ndarray | None = None,
) -> tuple[list[FalseAlarmCheck], np.ndarray, list[AccuracyCheck]]:
    """The decision rule on healthy held-out windows of each size: its false alarms, every window's evidence per
    test (what the CUSUM's limit is fitted on: (windows, charts), NaN where a test did not apply), and, on labelled
    held-out images, how far the estimated accuracy was from the true one."""
    checks, evidence, accuracy_checks = [], [], []
    for size in config.check_window_sizes:
        if size > held_out.size:
            continue  # reported by its absence; calibrate() warns
        alarms = 0
        errors, covered = [], 0
        for _ in range(config.check_windows):
            # Without replacement: a random subset of an iid sample is an iid sample, as a production window
            # is. Drawing with replacement repeats images, which KS sees as a distribution of its own.
            picked = rng.choice(held_out, size, replace=False)
            window = {"": {name: values[picked] for name, values in columns.items()}}
            # Their p-values and whether they page, not what moved: no effect sizes.
            decision = decide_window(window, {"": references[""]}, alpha=config.alpha, min_window=1, describe=False)
            alarms += decision.is_drift
            evidence.append(window_evidence(decision.tests, ""))
            if accuracy is not None and accuracy.has_labels and labels is not None:
                known = np.isfinite(labels[picked])
                if known.sum() >= config.min_window:
                    estimate = accuracy.estimate(columns[CONFIDENCE][picked]).atc
                    truth = float(labels[picked][known].mean())
                    errors.append(abs(estimate.estimate - truth))
                    covered += estimate.low <= truth <= estimate.high
        interval = stats.binomtest(alarms, config.check_windows).proportion_ci(method="wilson")
        checks.append(FalseAlarmCheck(size, config.check_windows, alarms, interval.low, interval.high))
        if errors:
            accuracy_checks.append(AccuracyCheck(size, len(errors), float(np.mean(errors)), covered / len(errors)))
    charts = sorted({chart for row in evidence for chart in row})
    null = np.array([[row.get(chart, np.nan) for chart in charts] for row in evidence], np.float64)
    return checks, null.reshape(len(evidence), len(charts)), accuracy_checks


def _separation(
    references: Mapping[str, ScoreReference], validation: Mapping[str, Mapping[str, np.ndarray]]
) -> list[Separation]:
    table = []
    for dataset, scores in validation.items():
        for name, reference in references.items():
            if reference.kind != "scalar" or name not in scores:
                continue
            shifted = np.asarray(scores[name], np.float64)
            shifted = shifted[np.isfinite(shifted)]  # a property that applies to none of them says nothing
            if shifted.size == 0:
                continue
            # Oriented so that higher is in distribution, as the separation measures read scores.
            healthy, shifted = reference.oriented(reference.sample), reference.oriented(shifted)
            table.append(
                Separation(
                    name,
                    dataset,
                    auroc(healthy, shifted),
                    fpr_at_tpr(healthy, shifted),
                    aupr_in(healthy, shifted),
                    aupr_out(healthy, shifted),
                )
            )
    return table


def _guardrail(separation: Sequence[Separation], primary_score: str | None) -> tuple[str | None, list[str]]:
    """Recommend the score with the best worst-case AUROC; warn when the primary score (None: the recommended
    one) is weak."""
    separation = [entry for entry in separation if entry.score in decision_scores()]
    if not separation:
        return None, []
    worst: dict[str, float] = {}
    for entry in separation:
        worst[entry.score] = min(worst.get(entry.score, 1.0), entry.auroc)
    recommended = max(worst, key=worst.get)
    primary_score = primary_score or recommended
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
        if reference.kind != "scalar":
            continue
        if reference.side == "both":
            metrics[f"threshold_{name}_low"], metrics[f"threshold_{name}_high"] = reference.lower, reference.upper
        else:
            metrics[f"threshold_{name}"] = reference.threshold
        metrics[f"expected_ood_rate_{name}"] = reference.expected_ood_rate
        for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99):
            metrics[f"reference_{name}_p{round(q * 100):02d}"] = float(np.quantile(reference.sample, q))
    for check in calibration.false_alarm_checks:
        metrics[f"false_alarm_rate_n{check.window_size}"] = check.rate
    for entry in calibration.separation:
        metrics[f"auroc_{entry.score}_{entry.dataset}"] = entry.auroc
        metrics[f"fpr95_{entry.score}_{entry.dataset}"] = entry.fpr95
    if calibration.accuracy is not None:
        metrics["reference_confidence"] = calibration.accuracy.reference_confidence
        if calibration.accuracy.has_labels:
            metrics["reference_accuracy"] = calibration.accuracy.reference_accuracy
            if np.isfinite(calibration.accuracy.threshold):  # -inf when every labelled image was right
                metrics["atc_threshold"] = calibration.accuracy.threshold
    for check in calibration.accuracy_checks:
        metrics[f"accuracy_mae_n{check.window_size}"] = check.mean_absolute_error
        metrics[f"accuracy_coverage_n{check.window_size}"] = check.coverage
    if calibration.sequential is not None:
        metrics["cusum_limit"] = calibration.sequential.limit
        metrics["cusum_run_length"] = calibration.sequential.run_length
    return metrics
