"""How much a drift likely matters: ``page`` (wake someone) or ``warn`` (look in working hours), by a policy kept in
the calibration, so receivers can route on it.

Significance says a window differs from the reference, not that it costs anything: with enough images every
difference is significant. Severity reads the size of what moved instead: the accuracy the window likely lost
(estimated without labels, :mod:`scoring.accuracy`), and how many more images lie outside a value's healthy bounds
than on healthy windows, for the values whose tests fired (a blur that confidence misses still moves sharpness).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scoring.accuracy import AccuracyEstimate, Interval

Level = Literal["page", "warn"]


@dataclass(frozen=True)
class Severity:
    """A drift's severity in one segment, and the reasons for it in words."""

    level: Level
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SeverityPolicy:
    """When a drift pages rather than warns. Defaults chosen on ``bench/eval_drift.py`` (README, "Severity")."""

    # Points of accuracy lost, estimated: the lower end of the interval must reach it, so chance alone rarely does.
    page_accuracy_drop: float = 0.03
    # A fired value's share of images outside its healthy bounds, as a multiple of the share on healthy images. Not
    # 2: at windows of 100 the OOD-rate test clears Holm's level only at about 3x the expected 5%, so every false
    # alarm it raised met 2x (10 of 21 false alarms paged on the bench); a quarter of a window shifted far out is
    # 5 to 6x.
    page_ood_ratio: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.page_accuracy_drop < 1:
            raise ValueError(f"page_accuracy_drop must be in (0, 1), got {self.page_accuracy_drop}")
        if self.page_ood_ratio <= 1:
            raise ValueError(f"page_ood_ratio must exceed 1, got {self.page_ood_ratio}")

    def assess(
        self,
        *,
        fired: Sequence[str],
        effects: Sequence[Any],
        accuracy: AccuracyEstimate | None,
    ) -> Severity:
        """The severity of a drift in one segment.

        Args:
            fired: the values whose tests fired (scores, properties, features, predictions).
            effects: the segment's effect sizes (``EffectSize``-like: score, ood_rate, expected_ood_rate).
            accuracy: the segment's estimated accuracy, when the calibration can estimate it.
        """
        reasons = []
        if accuracy is not None:
            lost = accuracy.drop
            if accuracy.atc is not None and accuracy.reference is not None:
                lost = Interval(
                    accuracy.reference - accuracy.atc.estimate,
                    accuracy.reference - accuracy.atc.high,
                    accuracy.reference - accuracy.atc.low,
                )
            if lost.low >= self.page_accuracy_drop:
                reasons.append(
                    f"accuracy likely down {100 * lost.estimate:.0f} points (at least {100 * lost.low:.0f}; "
                    f"pages from {100 * self.page_accuracy_drop:.0f})"
                )
        outliers = sorted(
            (effect for effect in effects if effect.score in fired and effect.ood_rate > 0),
            key=lambda effect: effect.ood_rate / max(effect.expected_ood_rate, 1e-9),
            reverse=True,
        )
        for effect in outliers:
            expected = effect.expected_ood_rate
            if effect.ood_rate < self.page_ood_ratio * expected:
                continue
            # A value every reference image shared (one aspect ratio) has no healthy outliers to be a multiple of.
            against = (
                f"{effect.ood_rate / expected:.1f}x the {expected:.0%} of healthy windows"
                if expected
                else "where healthy windows have none"
            )
            reasons.append(f"{effect.ood_rate:.0%} of images outside {effect.score}'s healthy bounds, {against}")
        if reasons:
            return Severity("page", reasons)
        return Severity("warn", ["no estimated loss of accuracy or outlier rate reaches the paging policy"])

    def describe(self) -> str:
        return (
            f"page when the estimated accuracy drop is at least {100 * self.page_accuracy_drop:.0f} points (lower end "
            f"of its interval) or a fired value's outlier rate is at least {self.page_ood_ratio:g}x expected; "
            "warn otherwise"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any] | None) -> SeverityPolicy:
        return cls(**(entry or {}))
