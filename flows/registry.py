"""MLflow as the system of record for thresholds: propose, review, approve, load, and log monitoring.

A calibration is an MLflow run (params, metrics, the calibration JSON, reference scores, plots) and a version
of the registered model ``gradwatch-threshold-<model name>``. Review status lives in version tags; the
``production`` alias is the approval, whether set by ``gradwatch thresholds approve`` or in the MLflow UI,
and it is the only thing monitoring loads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import shlex
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.review import ReviewLinks, ReviewSubject, decision_policy, review_markdown
from pipelines.redaction import redact
from scoring import GradwatchError, ScoringSettings
from scoring.calibration import Calibration, calibration_summary
from scoring.drift import EffectSize, WindowDecision
from scoring.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CALIBRATION_EXPERIMENT = "gradwatch-calibration"
MONITORING_EXPERIMENT = "gradwatch-monitoring"
CANDIDATE, PRODUCTION = "candidate", "production"
CALIBRATION_ARTIFACT = "calibration/calibration.json"

# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, "No data available"), the runs
# table a toggle away; "custom_model_development" is the value its experiment-type selector writes for that table
# (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, set as the experiment tag mlflow.experimentKind).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# The run page shows this tag as the run's description (markdown), as MLflow's own "Add description" writes it.
RUN_DESCRIPTION_TAG = "mlflow.note.content"

# MLflow's HTTP client retries 7 times with exponential backoff by default: minutes before an operator
# learns the server is down. Bounded here unless the environment says otherwise.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

_SUPPRESS_RUN_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


class RegistryError(GradwatchError):
    """The threshold registry cannot do what was asked; the message says why and what to do."""


class RegistryUnavailableError(RegistryError):
    """MLflow cannot be reached."""


class NoApprovedThresholdError(RegistryError):
    """No version of the model's thresholds carries the production alias."""


class ThresholdModelMismatchError(RegistryError):
    """The approved thresholds were calibrated for other weights than the model being monitored."""


def tracking_uri() -> str:
    """``GRADWATCH_MLFLOW_URI``, else ``MLFLOW_TRACKING_URI``, else MLflow's sqlite store in the working directory."""
    return os.environ.get("GRADWATCH_MLFLOW_URI") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def local_artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside its database file; None leaves a server's own location.

    MLflow otherwise writes them to ``./mlruns`` of whichever directory the command ran in: the demo's plots would
    land in the repository, and a scheduled worker's in its own working directory, away from the store naming them.
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def registered_model_name(model_name: str) -> str:
    return f"gradwatch-threshold-{re.sub(r'[^A-Za-z0-9_.-]+', '-', model_name)}"


@dataclass(frozen=True)
class ThresholdVersion:
    """One version of a model's thresholds as a reviewer sees it."""

    name: str
    version: str
    status: str  # proposed, approved, rejected
    model_id: str
    aliases: tuple[str, ...]
    run_id: str
    created: dt.datetime
    tags: dict[str, str]

    @property
    def is_production(self) -> bool:
        return PRODUCTION in self.aliases


class ThresholdRegistry:
    """Thresholds in an MLflow tracking server and model registry (or the local sqlite store)."""

    def __init__(self, uri: str | None = None) -> None:
        """Connect and check that MLflow answers.

        Raises:
            RegistryUnavailableError: within the bounded HTTP timeout, naming the (redacted) URI.
        """
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        # MLflow takes seconds to import; commands that do not track anything do not pay for it.
        from mlflow import MlflowClient

        self.uri = uri or tracking_uri()
        # As each run ends MLflow prints "View run ... at: <tracking URI>" on stdout, user and password included,
        # between the lines of gradwatch's own output. Off unless asked for, and never with credentials.
        if redact(self.uri) != self.uri:
            os.environ[_SUPPRESS_RUN_LINKS] = "true"
        else:
            os.environ.setdefault(_SUPPRESS_RUN_LINKS, "true")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        try:
            self.client.search_experiments(max_results=1)
        except Exception as error:  # MLflow raises MlflowException, requests' errors, sqlite's errors...
            raise RegistryUnavailableError(
                f"MLflow at {redact(self.uri)} does not answer ({type(error).__name__}: {_first_line(error)}); "
                "start it, or point GRADWATCH_MLFLOW_URI at a running server"
            ) from error

    # -- proposing -------------------------------------------------------------------------------------

    def propose(
        self,
        calibration: Calibration,
        *,
        model_name: str,
        params: Mapping[str, Any],
        artifacts: Mapping[str, bytes],
        run_name: str,
    ) -> ThresholdVersion:
        """Record a calibration as a run and register it as a new version, ``proposed`` and ``candidate``.

        Args:
            calibration: what monitoring will load once approved.
            model_name: the short model name the registered model is named after.
            params: run parameters (spec, score, TPR, reference source...).
            artifacts: extra files by artifact path (reference scores, PNG plots).
            run_name: what the reviewer sees in the run list.
        """
        experiment_id = self._experiment(CALIBRATION_EXPERIMENT)
        run = self.client.create_run(experiment_id, run_name=run_name, tags={"gradwatch.kind": "calibration"})
        run_id = run.info.run_id
        try:
            self._log_params(run_id, {**params, "model_id": calibration.model_id})
            timestamp = _now_ms()
            self.client.log_batch(
                run_id,
                metrics=[
                    _metric(key, _rounded(value), timestamp) for key, value in calibration_summary(calibration).items()
                ],
            )
            self._log_artifacts(run_id, {CALIBRATION_ARTIFACT: calibration.to_json().encode(), **artifacts})
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id)

        name = registered_model_name(model_name)
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, description=_model_description(model_name))
        version = self.client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/calibration",
            run_id=run_id,
            tags={"review_status": "proposed", "model_id": calibration.model_id},
        )
        self.client.set_registered_model_alias(name, CANDIDATE, version.version)
        proposed = self.get(name, version.version)
        description = review_markdown(self.review_subject(proposed, params), calibration, dict(params))
        self.client.set_tag(run_id, RUN_DESCRIPTION_TAG, description)
        self.client.update_model_version(name, version.version, description=description)
        return proposed

    # -- reviewing -------------------------------------------------------------------------------------

    def versions(self, name: str) -> list[ThresholdVersion]:
        self._require_model(name)
        found = self.client.search_model_versions(filter_string=f"name = '{name}'")
        return sorted((self.get(name, v.version) for v in found), key=lambda v: int(v.version), reverse=True)

    def get(self, name: str, version: str) -> ThresholdVersion:
        self._require_model(name)
        try:
            found = self.client.get_model_version(name, str(version))
        except Exception as error:
            raise RegistryError(f"{name} has no version {version}; 'gradwatch thresholds list' shows them") from error
        aliases = tuple(alias for alias, v in self._aliases(name).items() if v == str(version))
        return ThresholdVersion(
            name=name,
            version=str(found.version),
            status=found.tags.get("review_status", "proposed"),
            model_id=found.tags.get("model_id", ""),
            aliases=aliases,
            run_id=found.run_id,
            created=dt.datetime.fromtimestamp(found.creation_timestamp / 1000, dt.UTC),
            tags=dict(found.tags),
        )

    def approve(self, name: str, version: str, *, by: str, note: str | None = None) -> ThresholdVersion:
        """Move ``production`` to ``version``; the version it leaves stays approved, so rollback is one approval."""
        _require_text(by, "--by must name who approves (recorded in the version's approved_by tag)")
        target = self.get(name, version)
        if target.status == "rejected":
            raise RegistryError(f"{name} version {version} was rejected; propose a new calibration instead")
        previous = self._aliases(name).get(PRODUCTION)
        now = _now_iso()
        tags = {"review_status": "approved", "approved_by": by, "approved_at": now}
        if note:
            tags["approval_note"] = note
        if previous and previous != target.version:
            tags["previous_production"] = previous
            self.client.set_model_version_tag(name, previous, "superseded_at", now)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, target.version, key, value)
        self.client.set_registered_model_alias(name, PRODUCTION, target.version)
        if self._aliases(name).get(CANDIDATE) == target.version:
            self.client.delete_registered_model_alias(name, CANDIDATE)
        return self.get(name, target.version)

    def reject(self, name: str, version: str, *, by: str, note: str) -> ThresholdVersion:
        _require_text(by, "--by must name who rejects (recorded in the version's rejected_by tag)")
        _require_text(note, "--note must say why the version is rejected, so the next calibration can address it")
        target = self.get(name, version)
        if target.is_production:
            raise RegistryError(
                f"{name} version {version} is in production; approve another version first, then reject this one"
            )
        tags = {"review_status": "rejected", "rejected_by": by, "rejected_at": _now_iso(), "rejection_note": note}
        for key, value in tags.items():
            self.client.set_model_version_tag(name, target.version, key, value)
        if CANDIDATE in target.aliases:
            self.client.delete_registered_model_alias(name, CANDIDATE)
        return self.get(name, target.version)

    def review_subject(self, version: ThresholdVersion, params: Mapping[str, Any] | None = None) -> ReviewSubject:
        """The version as the review commands name it (model spec from its run, unless ``params`` give it)."""
        params = params if params is not None else self.client.get_run(version.run_id).data.params
        return ReviewSubject(
            name=version.name,
            version=version.version,
            status=version.status,
            aliases=version.aliases,
            tags=version.tags,
            model_spec=str(params.get("model_spec", DEFAULT_MODEL)),
            tracking_uri=redact(self.uri),
            default_tracking_uri=tracking_uri() == self.uri,
        )

    def review_links(self, version: ThresholdVersion) -> ReviewLinks:
        """The version's run and model-version pages in the MLflow UI."""
        experiment_id = self.client.get_run(version.run_id).info.experiment_id
        if self.uri.startswith(("http://", "https://")):
            base, start_ui = redact(self.uri).rstrip("/"), None
        else:  # a store nobody serves: the UI MLflow starts on it, at its default address
            base = f"http://127.0.0.1:{_UI_PORT}"
            start_ui = f"mlflow ui --backend-store-uri {shlex.quote(_absolute_store(self.uri))} --port {_UI_PORT}"
        experiment = f"{base}/#/experiments/{experiment_id}"
        return ReviewLinks(
            experiment=f"{experiment}{_CLASSIC_VIEW}",
            run=f"{experiment}/runs/{version.run_id}{_CLASSIC_VIEW}",
            version=f"{base}/#/models/{urllib.parse.quote(version.name)}/versions/{version.version}",
            start_ui=start_ui,
        )

    def calibration(self, version: ThresholdVersion) -> Calibration:
        """The calibration document a version holds, as monitoring loads it."""
        with tempfile.TemporaryDirectory() as scratch:
            path = self.client.download_artifacts(version.run_id, CALIBRATION_ARTIFACT, scratch)
            return Calibration.from_json(Path(path).read_text())

    def tag(self, name: str, version: str, tags: Mapping[str, str]) -> ThresholdVersion:
        """Set tags on a version (a check's verdict beside its review), leaving its review status as it is."""
        target = self.get(name, version)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, target.version, key, str(value)[:_TAG_VALUE_LIMIT])
        return self.get(name, target.version)

    # -- monitoring ------------------------------------------------------------------------------------

    def load_production(
        self, model_name: str, model_id: str, *, scoring: ScoringSettings | None = None
    ) -> tuple[Calibration, ThresholdVersion]:
        """The approved calibration for the monitored model.

        Args:
            model_name: the short model name the registered model is named after.
            model_id: the monitored weights' id.
            scoring: the settings windows will be scored with; None accepts any (the report, which only reads).

        Raises:
            NoApprovedThresholdError: nothing carries the production alias.
            ThresholdModelMismatchError: it was calibrated for other weights than ``model_id``, or scored with
                settings that move scores (precision, decoder, temperature) other than ``scoring``'s.
        """
        name = registered_model_name(model_name)
        production = self._aliases(name).get(PRODUCTION) if self._model_exists(name) else None
        if production is None:
            raise NoApprovedThresholdError(
                f"no approved thresholds for {model_name} in {redact(self.uri)}: run 'gradwatch calibrate', have "
                f"an ML owner review it, then 'gradwatch thresholds approve VERSION --by NAME' (or set the "
                f"'{PRODUCTION}' alias of {name} in the MLflow UI)"
            )
        version = self.get(name, production)
        if version.status == "rejected":
            raise NoApprovedThresholdError(
                f"{name} v{version.version} carries the '{PRODUCTION}' alias but was rejected "
                f"({version.tags.get('rejection_note', 'no note')}); move the alias to an approved version, or "
                f"approve this one with 'gradwatch thresholds approve {version.version} --by NAME'"
            )
        if version.status != "approved":
            version = self._record_approval_outside_gradwatch(name, version)
        calibration = self.calibration(version)
        if calibration.model_id != model_id:
            raise ThresholdModelMismatchError(
                f"approved thresholds {name} v{version.version} were calibrated for {calibration.model_id}, but the "
                f"monitored model is {model_id}; calibrate and approve thresholds for these weights"
            )
        mismatch = scoring.mismatch(calibration.scoring) if scoring is not None else None
        if mismatch is not None:
            raise ThresholdModelMismatchError(f"approved thresholds {name} v{version.version} do not hold: {mismatch}")
        return calibration, version

    def _record_approval_outside_gradwatch(self, name: str, version: ThresholdVersion) -> ThresholdVersion:
        """Record as approved a version someone gave the production alias in the MLflow UI (or its API).

        MLflow keeps neither who set an alias nor when (its alias table holds name, alias and version only), so
        the record says so, with when it was first seen; versions approved before it are marked superseded then.
        """
        now = _now_iso()
        for other in self.versions(name):
            if other.version != version.version and other.status == "approved" and "superseded_at" not in other.tags:
                self.client.set_model_version_tag(name, other.version, "superseded_at", now)
        tags = {
            "review_status": "approved",
            "approved_by": "unknown: the production alias was set outside gradwatch, and MLflow records no user",
            "approved_at": f"unknown, before {now}",
            "approved_via": "the production alias, set in the MLflow UI or API",
            "approval_detected_at": now,
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version.version, key, value)
        log.warning(
            "%s v%s was approved outside gradwatch (its production alias set in the MLflow UI or API): recorded "
            "on the version as approved at %s by an unknown reviewer; 'gradwatch thresholds approve %s --by NAME' "
            "records who", name, version.version, now, version.version,
        )  # fmt: skip
        return self.get(name, version.version)

    def start_monitoring_run(self, run_name: str, params: Mapping[str, Any]) -> str:
        """One run per monitoring flow run; each window is a step of its metrics (see README)."""
        run = self.client.create_run(
            self._experiment(MONITORING_EXPERIMENT), run_name=run_name, tags={"gradwatch.kind": "monitoring"}
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def log_window(
        self, run_id: str, window_start: dt.datetime, window: dt.timedelta, decision: WindowDecision
    ) -> None:
        """Log a window's decision as metrics at step = window index since the epoch, timestamped at its start.

        A segment is data: one MLflow cannot take in a metric name (a comma, a quote, a newline, ``..``, more than
        64 characters, a ``/``, which would read as one more level) is logged under ``segment-<hash>``, with a tag
        ``gradwatch.segment.<that key>`` holding its name.
        """
        from mlflow.entities import RunTag

        step = int(window_start.timestamp() // window.total_seconds())
        timestamp = int(window_start.timestamp() * 1000)
        metrics = {"drift": float(decision.is_drift), "tested": float(decision.status != "insufficient_data")}
        for segment, count in decision.n.items():
            metrics[_key(segment_key(segment), "n")] = float(count)
        for record in decision.tests:
            metrics[_key(segment_key(record.segment), record.score, f"{record.test}_p")] = record.p_value
        for segment, state in decision.sequential.items():
            metrics[_key(segment_key(segment), "cusum")] = state.statistic
            metrics[_key(segment_key(segment), "cusum_limit")] = state.limit
        for segment, estimate in decision.accuracy.items():
            metrics[_key(segment_key(segment), "confidence_drop")] = estimate.drop.estimate
            if estimate.atc is not None:
                metrics[_key(segment_key(segment), "accuracy_atc")] = estimate.atc.estimate
                metrics[_key(segment_key(segment), "accuracy_atc_low")] = estimate.atc.low
                metrics[_key(segment_key(segment), "accuracy_atc_high")] = estimate.atc.high
                metrics[_key(segment_key(segment), "accuracy_doc")] = estimate.doc.estimate
        for segment, severity in decision.severity.items():
            metrics[_key(segment_key(segment), "severity_page")] = float(severity.level == "page")
        for effect in decision.effects:
            for field_name in _EFFECT_METRICS:
                metrics[_key(segment_key(effect.segment), effect.score, field_name)] = getattr(effect, field_name)
        tags = [
            RunTag(f"{_SEGMENT_TAG}{segment_key(segment)}", segment[:_TAG_VALUE_LIMIT])
            for segment in decision.n
            if segment_key(segment) != segment
        ]
        self.client.log_batch(run_id, metrics=[_metric(k, v, timestamp, step) for k, v in metrics.items()], tags=tags)

    def log_report(self, run_id: str, files: Mapping[str, bytes]) -> None:
        """Attach report files (charts, HTML) to a finished monitoring run."""
        self._log_artifacts(run_id, files)

    def end_run(self, run_id: str, *, failed: bool = False) -> None:
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def fail_if_running(self, run_id: str) -> None:
        """Mark a monitoring run FAILED that a killed monitor left RUNNING (one that ended is left as it is)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return  # deleted since, or in another tracking store: nothing left to mark
        if run.info.status == "RUNNING":
            self.client.set_tag(run_id, "gradwatch.ended_by", "the next monitor: this run was killed")
            self.client.set_terminated(run_id, status="FAILED")

    # -- helpers ---------------------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        """The experiment's id, created on first use beside a local store and tagged to open as a runs table."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(
                name, artifact_location=local_artifact_location(self.uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store made before the tag: fixed for its reviewers too
            self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id

    def _model_exists(self, name: str) -> bool:
        return bool(self.client.search_registered_models(filter_string=f"name = '{name}'"))

    def _require_model(self, name: str) -> None:
        if not self._model_exists(name):
            raise RegistryError(f"no thresholds registered as {name}; run 'gradwatch calibrate' first")

    def _aliases(self, name: str) -> dict[str, str]:
        return {alias: str(version) for alias, version in self.client.get_registered_model(name).aliases.items()}

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()])

    def _log_artifacts(self, run_id: str, artifacts: Mapping[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            for artifact_path, data in artifacts.items():
                local = Path(scratch) / artifact_path
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
            self.client.log_artifacts(run_id, scratch)


# Effect sizes logged per window; the expected OOD rate is the calibration's, logged with it.
_EFFECT_METRICS = [
    f.name for f in dataclasses.fields(EffectSize) if f.name not in ("score", "segment", "expected_ood_rate")
]


_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_\-:][A-Za-z0-9_\-. :]{0,63}")
_SEGMENT_TAG = "gradwatch.segment."
_TAG_VALUE_LIMIT = 5000


def segment_key(segment: str) -> str:
    """A segment as a part of MLflow metric and tag names: as it is when MLflow takes it and it cannot be mistaken
    for another level or another segment's key; else ``segment-`` and 12 hex digits of its SHA-256."""
    if not segment or (_SAFE_SEGMENT.fullmatch(segment) and ".." not in segment and not segment.startswith("segment-")):
        return segment
    return f"segment-{hashlib.sha256(segment.encode()).hexdigest()[:12]}"


_UI_PORT = 5000
# MLflow 3.17's UI takes its GenAI/model-training switch from this query parameter, else from the browser's
# storage, else GenAI, whatever the experiment's kind tag says (seen in its bundle: the workflowType context, and in
# a headless-Chromium screenshot, bench/mlflow_ui.py); a link that carries it opens the runs table.
_CLASSIC_VIEW = "?workflowType=machine_learning"


def _absolute_store(uri: str) -> str:
    """A sqlite store's URI with an absolute path, valid from any working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _model_description(model_name: str) -> str:
    return (
        f"gradwatch drift thresholds for `{model_name}`: one version per calibration, each described with its "
        "review checklist. A version is approved when it carries the alias `production` (`gradwatch thresholds "
        'approve VERSION --by NAME`, or add the alias on the version\'s page). Do not use "Promote model": it '
        "copies a version into another registered model, which monitoring never reads."
    )


def _rounded(value: float) -> float:
    """A metric as the MLflow UI shows it, 4 significant digits: the exact values are in the calibration JSON."""
    return float(f"{float(value):.4g}")


def _key(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _metric(key: str, value: float, timestamp: int, step: int = 0):
    from mlflow.entities import Metric

    return Metric(key, float(value), timestamp, step)


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _require_text(value: str | None, message: str) -> None:
    """Refuse a blank reviewer name or note: a review record nobody can be asked about is no record."""
    if value is None or not value.strip():
        raise RegistryError(f"{message}; got {value!r}")


def _first_line(error: BaseException) -> str:
    """The error's first line, with any user:password@ of a URL inside it removed."""
    return redact((str(error).strip().splitlines() or [""])[0][:300])


def describe(version: ThresholdVersion) -> dict[str, Any]:
    """A version as a JSON-ready dict, for ``gradwatch thresholds show``."""
    return {
        "name": version.name,
        "version": version.version,
        "status": version.status,
        "aliases": list(version.aliases),
        "model_id": version.model_id,
        "run_id": version.run_id,
        "created": version.created.isoformat(timespec="seconds"),
        "tags": version.tags,
    }


def review_record(version: ThresholdVersion, calibration: Calibration, links: ReviewLinks) -> dict[str, Any]:
    """``thresholds show --json``: the version, its exact thresholds and checks, and where to review it."""
    thresholds = {}
    for name in calibration.scores:
        reference = calibration.reference(name)
        thresholds[name] = (
            {"tests": list(reference.tests), "reference_sample": len(reference.sample)}
            if reference.side == "none"
            else {"side": reference.side, "lower": reference.lower, "upper": reference.upper}
        )
    return {
        **describe(version),
        "mlflow_run_url": links.run,
        "mlflow_version_url": links.version,
        "reference_images": calibration.reference_images,
        "lead_score": calibration.lead_score,
        "recommended_score": calibration.recommended_score,
        "thresholds": thresholds,
        "false_alarm_rates": [
            {
                "window_size": check.window_size,
                "rate": check.rate,
                "ci_low": check.ci_low,
                "ci_high": check.ci_high,
                "windows": check.windows,
            }
            for check in calibration.false_alarm_checks
        ],
        "validation": [dataclasses.asdict(entry) for entry in calibration.separation],
        "decision": decision_policy(calibration),
    }
