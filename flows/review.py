"""What a threshold reviewer reads: a calibration summed up in the terminal (``calibrate``, ``thresholds show``) and
as markdown on its MLflow run and model version, with the checklist to go through and the commands that decide it.

Numbers are rounded where they are shown (4 significant digits); the exact values monitoring uses are in the
version's ``calibration/calibration.json`` and ``thresholds show --json``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from scoring.calibration import Calibration
from scoring.settings import DEFAULT_MODEL

_APPROVE, _REJECT = "--by YOUR_NAME --note '...'", "--by YOUR_NAME --note 'why'"


@dataclass(frozen=True)
class ReviewLinks:
    """Where the reviewer opens a version in the MLflow UI."""

    experiment: str
    run: str
    version: str
    # How to start the UI first, for a local store nobody serves (None: the tracking URI is a server).
    start_ui: str | None = None


@dataclass(frozen=True)
class ReviewSubject:
    """The version under review, as ``thresholds`` commands name it."""

    name: str
    version: str
    status: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    model_spec: str
    tracking_uri: str  # redacted
    default_tracking_uri: bool  # the commands need no GRADWATCH_MLFLOW_URI to find it

    def command(self, action: str, arguments: str = "") -> str:
        """A ``gradwatch thresholds`` command line for this version; ``arguments`` are shell text as shown."""
        model = "" if self.model_spec == DEFAULT_MODEL else f" --model {shlex.quote(self.model_spec)}"
        store = "" if self.default_tracking_uri else f"GRADWATCH_MLFLOW_URI={shlex.quote(self.tracking_uri)} "
        return f"{store}gradwatch thresholds {action} {self.version}{model} {arguments}".rstrip()


def shown(value: float) -> str:
    """A number as a reviewer reads it: 4 significant digits."""
    return f"{value:.4g}"


def threshold_rows(calibration: Calibration) -> list[tuple[str, str]]:
    """Each value windows are tested on, with its per-image bound(s) or the test that takes it whole."""
    rows = []
    for name in calibration.scores:
        reference = calibration.reference(name)
        if reference.side == "none":
            bound = f"tested by {', '.join(reference.tests)} against {len(reference.sample)} reference images"
        elif reference.side == "both":
            bound = f"range {shown(reference.lower)} .. {shown(reference.upper)} (between = in distribution)"
        else:
            direction = "higher" if reference.side == "low" else "lower"
            bound = f"threshold {shown(reference.threshold)} ({direction} = in distribution)"
        rows.append((name, bound))
    return rows


def false_alarm_lines(calibration: Calibration) -> list[str]:
    if not calibration.false_alarm_checks:
        return ["not checked: too few reference images to hold out a window (see warnings)"]
    return [
        f"windows of {check.window_size:<4} {check.rate:.1%} (95% CI {check.ci_low:.1%}-{check.ci_high:.1%}), "
        f"{check.false_alarms} of {check.windows} healthy held-out windows paged; alpha {calibration.config.alpha:.1%}"
        for check in calibration.false_alarm_checks
    ]


def separation_lines(calibration: Calibration) -> list[str]:
    if not calibration.separation:
        return ["none: calibrated without --validation-ood, so no score's separation was measured"]
    return [
        f"{entry.score:<9} vs {entry.dataset}: AUROC {entry.auroc:.3f}, FPR95 {entry.fpr95:.3f}"
        for entry in calibration.separation
    ]


def lead_line(calibration: Calibration) -> str:
    recommended = calibration.recommended_score
    if recommended is None:
        return f"{calibration.lead_score} (no score recommended: no validation sets)"
    if recommended == calibration.lead_score:
        return f"{calibration.lead_score}, the recommended score (best worst-case AUROC)"
    return f"{calibration.lead_score}; recommended: {recommended} (best worst-case AUROC)"


def status_lines(subject: ReviewSubject) -> list[str]:
    """The review status, who decided it and when, and what to run next."""
    tags = subject.tags
    aliases = f" (alias {', '.join(subject.aliases)})" if subject.aliases else ""
    lines = [f"{subject.status}{aliases}"]
    if subject.status == "approved":
        lines.append(f"approved by {tags.get('approved_by', 'unknown')} at {tags.get('approved_at', 'unknown')}")
        if tags.get("approved_via"):
            lines.append(f"via {tags['approved_via']}")
        if tags.get("approval_note"):
            lines.append(f"note: {tags['approval_note']}")
    elif subject.status == "rejected":
        lines.append(f"rejected by {tags.get('rejected_by', 'unknown')} at {tags.get('rejected_at', 'unknown')}")
        lines.append(f"why: {tags.get('rejection_note', '')}")
    if subject.status != "rejected" and "production" not in subject.aliases:
        lines.append(f"approve: {subject.command('approve', _APPROVE)}")
    if subject.status == "proposed":
        lines.append(f"reject:  {subject.command('reject', _REJECT)}")
    if tags.get("reference_check"):
        lines.append(f"reference check: {tags['reference_check']}")
    return lines


def review_text(subject: ReviewSubject, calibration: Calibration, links: ReviewLinks) -> str:
    """``thresholds show``: everything the reviewer decides on, in the terminal."""
    config = calibration.config
    sections = [
        f"{subject.name} version {subject.version}",
        f"  model        {calibration.model_id}",
        f"  reference    {calibration.reference_images} images; TPR {config.tpr:.0%}, alpha {config.alpha:.1%}, "
        f"windows of at least {config.min_window}",
        f"  lead score   {lead_line(calibration)}",
        f"  MLflow run   {links.run}",
        f"  experiment   {links.experiment}",
        f"  version      {links.version}",
    ]
    if links.start_ui:
        sections.append(f"               (a local store: start the UI first with '{links.start_ui}')")
    sections += ["thresholds (per image)", *(f"  {name:<16} {bound}" for name, bound in threshold_rows(calibration))]
    sections += ["false alarms on held-out healthy windows", *_indented(false_alarm_lines(calibration))]
    sections += ["validation sets", *_indented(separation_lines(calibration))]
    policy = decision_policy(calibration)
    sections += [
        "decision policy",
        f"  severity     {policy['severity']}",
        f"  accuracy     {policy['accuracy']}",
        *(f"               {check}" for check in policy["accuracy_checks"]),
        f"  sequential   {policy['sequential']}",
    ]
    if calibration.warnings:
        sections += ["warnings", *(f"  - {warning}" for warning in calibration.warnings)]
    sections += ["review", *_indented(status_lines(subject))]
    return "\n".join(sections)


def review_markdown(subject: ReviewSubject, calibration: Calibration, params: dict[str, Any]) -> str:
    """The run's and the model version's description in the MLflow UI: what was calibrated on what, the results,
    the checklist, and how to approve or reject (never with "Promote model")."""
    config = calibration.config
    rows = "\n".join(f"| {name} | {bound} |" for name, bound in threshold_rows(calibration))
    lines = [
        f"## Thresholds for `{calibration.model_id}`, version {subject.version}: {subject.status}",
        "",
        f"Calibrated on **{calibration.reference_images} reference images** from "
        f"`{params.get('reference_source', '?')}`"
        f" (sha256 of their ids `{str(params.get('reference_sha256', '?'))[:12]}`), model `{subject.model_spec}`, "
        f"TPR {config.tpr:.0%}, alpha {config.alpha:.1%}, windows of at least {config.min_window} images. "
        f"Lead score: **{lead_line(calibration)}**.",
        "",
        "| value | per-image bound |",
        "|---|---|",
        rows,
        "",
        "**False alarms on held-out healthy windows**",
        "",
        *(f"- {line}" for line in false_alarm_lines(calibration)),
        "",
        "**Validation sets**",
        "",
        *(f"- {line}" for line in separation_lines(calibration)),
        "",
    ]
    if calibration.warnings:
        lines += ["**Warnings**", "", *(f"- {warning}" for warning in calibration.warnings), ""]
    lines += [
        "### Review checklist",
        "",
        "- [ ] The reference is healthy images of *this* feed (same cameras, products, hours): a reference that is "
        "not a sample of production pages healthy windows. After a day of monitoring, "
        f"`{subject.command('check', '--against OUT')}` tells.",
        f"- [ ] Every false-alarm interval above sits at or below alpha ({config.alpha:.1%}).",
        "- [ ] Each value's plot (`plots/<name>.png` in this run's artifacts): its bound(s) in the tail of the "
        "reference, not in its body; the shifted sets, if any, beyond them.",
        "- [ ] The lead score separates the validation sets best or nearly so (AUROC above).",
        "- [ ] The warnings are understood or fixed.",
        "- [ ] Precision, decoder and temperature (run parameters) are what production scores with.",
        "",
        "### Decide",
        "",
        f"- Approve: `{subject.command('approve', _APPROVE)}`, or in this UI: open "
        "the model version and add the alias `production`. The next monitor run records the approval. Do not use "
        '"Promote model": it copies the version into another registered model, which monitoring never reads.',
        f"- Reject: `{subject.command('reject', _REJECT)}`",
    ]
    return "\n".join(lines)


# A calibration without a CUSUM: made before sequential detection, or on too few images for a held-out window.
_NO_SEQUENTIAL = "none: no held-out window to fit its limit on (calibrate on more images, or with this version)"


def decision_policy(calibration: Calibration) -> dict[str, Any]:
    """What a reviewer approves beside the thresholds: how windows are decided, paged and costed."""
    accuracy, sequential = calibration.accuracy, calibration.sequential
    return {
        "alpha": calibration.config.alpha,
        "min_window": calibration.config.min_window,
        "false_alarm_checks": [
            f"n={check.window_size}: {check.false_alarms}/{check.windows} healthy windows paged "
            f"(95% {check.ci_low:.3f}-{check.ci_high:.3f})"
            for check in calibration.false_alarm_checks
        ],
        "severity": calibration.severity.describe(),
        "accuracy": accuracy.describe() if accuracy else "not estimated (calibrated before this version)",
        "accuracy_checks": [
            f"n={check.window_size}: mean absolute error {check.mean_absolute_error:.3f}, interval held the truth in "
            f"{check.coverage:.0%} of {check.windows} held-out windows"
            for check in calibration.accuracy_checks
        ],
        "sequential": sequential.describe() if sequential else _NO_SEQUENTIAL,
        "warnings": calibration.warnings,
    }


def _indented(lines: list[str]) -> list[str]:
    return [f"  {line}" for line in lines]
