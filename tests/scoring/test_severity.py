"""Severity: a drift pages when it likely costs accuracy or puts many more images outside their bounds, else warns."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.accuracy import fit_accuracy
from scoring.drift import EffectSize
from scoring.severity import SeverityPolicy


def effect(score: str, ood_rate: float) -> EffectSize:
    return EffectSize(score, "", wasserstein=0.0, psi=0.0, median_shift=0.0, ood_rate=ood_rate, expected_ood_rate=0.05)


def test_an_estimated_loss_of_accuracy_pages_only_when_its_interval_clears_the_policy() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.beta(8, 2, 2000)
    model = fit_accuracy(confidence, (rng.random(2000) < confidence).astype(float))
    policy = SeverityPolicy()
    healthy = policy.assess(fired=["msp"], effects=[effect("msp", 0.06)], accuracy=model.estimate(confidence[:300]))
    assert healthy.level == "warn"
    worse = policy.assess(fired=["msp"], effects=[effect("msp", 0.06)], accuracy=model.estimate(confidence[:300] * 0.8))
    assert worse.level == "page"
    assert "accuracy likely down" in worse.reasons[0]


def test_an_outlier_rate_pages_for_a_value_that_fired_and_not_for_one_that_did_not() -> None:
    policy = SeverityPolicy(page_ood_ratio=2.0)
    assert policy.assess(fired=["sharpness"], effects=[effect("sharpness", 0.12)], accuracy=None).level == "page"
    assert policy.assess(fired=["msp"], effects=[effect("sharpness", 0.12)], accuracy=None).level == "warn"
    assert policy.assess(fired=["sharpness"], effects=[effect("sharpness", 0.09)], accuracy=None).level == "warn"


def test_a_policy_that_could_not_mean_anything_is_refused() -> None:
    with pytest.raises(ValueError, match="page_accuracy_drop"):
        SeverityPolicy(page_accuracy_drop=3)
    with pytest.raises(ValueError, match="page_ood_ratio"):
        SeverityPolicy(page_ood_ratio=0.5)
    assert SeverityPolicy.from_dict(None) == SeverityPolicy()
    assert "3 points" in SeverityPolicy().describe()


def test_by_default_the_outlier_rate_of_a_chance_alarm_warns_and_that_of_a_shifted_quarter_pages() -> None:
    # At windows of 100 the OOD-rate test fires by chance at about 15 images outside of 5 expected: 3x.
    policy = SeverityPolicy()
    assert policy.assess(fired=["noise"], effects=[effect("noise", 0.16)], accuracy=None).level == "warn"
    assert policy.assess(fired=["noise"], effects=[effect("noise", 0.28)], accuracy=None).level == "page"
