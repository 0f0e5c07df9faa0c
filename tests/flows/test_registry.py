"""Thresholds in MLflow: a real server on loopback, and the embedded sqlite default."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

from flows.registry import (
    NoApprovedThresholdError,
    RegistryError,
    RegistryUnavailableError,
    ThresholdModelMismatchError,
    ThresholdRegistry,
    registered_model_name,
)
from pipelines.redaction import redact
from scoring import ScoringSettings
from scoring.calibration import CalibrationConfig, calibrate
from tests.flows.conftest import free_port

SCORES = ("gradnorm", "energy", "msp", "maxlogit")
FAST = CalibrationConfig(check_windows=20, check_window_sizes=(50,))


def _calibration(model_id: str, seed: int = 0, scoring: ScoringSettings = ScoringSettings()):
    rng = np.random.default_rng(seed)
    base = rng.normal(10, 1, 400)
    scores = {name: base + rng.normal(0, 0.2, 400) for name in SCORES}
    return calibrate(scores, model_id=model_id, config=FAST, scoring=scoring.recorded())


def _propose(
    registry: ThresholdRegistry, model: str, model_id: str, seed: int = 0, scoring: ScoringSettings = ScoringSettings()
):
    return registry.propose(
        _calibration(model_id, seed, scoring),
        model_name=model,
        params={"model_spec": model, "reference_source": "s3://feed/reference"},
        artifacts={"plots/empty.png": b"\x89PNG"},
        run_name=f"calibrate {model}",
    )


def test_propose_approve_load(mlflow_server: str) -> None:
    registry = ThresholdRegistry(mlflow_server)
    proposed = _propose(registry, "cam-model", "cam-model@aaaaaaaaaaaa")
    assert (proposed.name, proposed.status, proposed.aliases) == (
        "gradwatch-threshold-cam-model",
        "proposed",
        ("candidate",),
    )
    with pytest.raises(NoApprovedThresholdError, match="thresholds approve VERSION"):
        registry.load_production("cam-model", "cam-model@aaaaaaaaaaaa")

    approved = registry.approve(proposed.name, proposed.version, by="ana", note="histograms look healthy")
    assert approved.status == "approved"
    assert approved.aliases == ("production",)
    assert approved.tags["approved_by"] == "ana"
    assert approved.tags["approval_note"] == "histograms look healthy"
    calibration, version = registry.load_production("cam-model", "cam-model@aaaaaaaaaaaa")
    assert version.version == proposed.version
    assert calibration.threshold("msp") == _calibration("x").threshold("msp")

    run = registry.client.get_run(proposed.run_id)
    assert run.data.params["reference_source"] == "s3://feed/reference"
    assert "threshold_gradnorm" in run.data.metrics
    assert "false_alarm_rate_n50" in run.data.metrics
    artifacts = {item.path for item in registry.client.list_artifacts(proposed.run_id, "calibration")}
    assert artifacts == {"calibration/calibration.json"}


def test_reject_and_rollback(mlflow_server: str) -> None:
    registry = ThresholdRegistry(mlflow_server)
    name = registered_model_name("line-3")
    first = _propose(registry, "line-3", "line-3@bbbbbbbbbbbb", seed=1)
    registry.approve(name, first.version, by="ana")
    second = _propose(registry, "line-3", "line-3@bbbbbbbbbbbb", seed=2)
    registry.approve(name, second.version, by="ben", note="new camera batch")
    assert registry.get(name, second.version).tags["previous_production"] == first.version
    assert "superseded_at" in registry.get(name, first.version).tags
    assert registry.load_production("line-3", "line-3@bbbbbbbbbbbb")[1].version == second.version

    registry.approve(name, first.version, by="ana", note="rollback: second one pages on night shots")
    assert registry.load_production("line-3", "line-3@bbbbbbbbbbbb")[1].version == first.version

    third = _propose(registry, "line-3", "line-3@bbbbbbbbbbbb", seed=3)
    rejected = registry.reject(name, third.version, by="ana", note="reference had blurred images")
    assert rejected.status == "rejected"
    assert rejected.aliases == ()
    with pytest.raises(RegistryError, match="was rejected"):
        registry.approve(name, third.version, by="ana")
    with pytest.raises(RegistryError, match="is in production"):
        registry.reject(name, first.version, by="ana", note="no")
    statuses = {v.version: (v.status, v.aliases) for v in registry.versions(name)}
    assert statuses == {
        first.version: ("approved", ("production",)),
        second.version: ("approved", ()),
        third.version: ("rejected", ()),
    }


def test_thresholds_of_other_weights_are_refused(mlflow_server: str) -> None:
    registry = ThresholdRegistry(mlflow_server)
    proposed = _propose(registry, "dock", "dock@cccccccccccc")
    registry.approve(proposed.name, proposed.version, by="ana")
    with pytest.raises(ThresholdModelMismatchError, match="calibrated for dock@cccccccccccc"):
        registry.load_production("dock", "dock@dddddddddddd")


@pytest.mark.parametrize(
    ("setting", "calibrated", "monitored", "model"),
    [("precision", "bf16", "fp32", "gate"), ("decoder", "device", "host", "pier"), ("temperature", 2.0, 1.0, "quay")],
)
def test_thresholds_calibrated_with_other_settings_are_refused(
    mlflow_server: str, setting: str, calibrated, monitored, model: str
) -> None:
    registry = ThresholdRegistry(mlflow_server)
    model_id = f"{model}@ffffffffffff"
    proposed = _propose(registry, model, model_id, scoring=ScoringSettings(**{setting: calibrated}))
    registry.approve(proposed.name, proposed.version, by="ana")
    with pytest.raises(ThresholdModelMismatchError, match=f"monitor with --{setting} {calibrated}"):
        registry.load_production(model, model_id, scoring=ScoringSettings(**{setting: monitored}))
    calibration, _ = registry.load_production(model, model_id, scoring=ScoringSettings(**{setting: calibrated}))
    assert calibration.scoring[setting] == calibrated
    assert registry.load_production(model, model_id)[0].scoring[setting] == calibrated  # None: any


def test_windows_are_logged_as_steps_of_one_run(mlflow_server: str) -> None:
    registry = ThresholdRegistry(mlflow_server)
    calibration = _calibration("m@1")
    run_id = registry.start_monitoring_run("monitor feed", {"source": "s3://feed"})
    rng = np.random.default_rng(9)
    hour = dt.timedelta(hours=1)
    starts = [dt.datetime(2026, 11, 26, h, tzinfo=dt.UTC) for h in (13, 14)]
    for start, shift in zip(starts, (0.0, 2.0), strict=True):
        window = {"": {name: rng.normal(10 - shift, 1, 100) for name in SCORES}}
        registry.log_window(run_id, start, hour, calibration.decide(window))
    registry.end_run(run_id)
    history = registry.client.get_metric_history(run_id, "drift")
    assert [(m.step, m.value) for m in history] == [
        (int(s.timestamp()) // 3600, v) for s, v in zip(starts, (0.0, 1.0), strict=True)
    ]
    assert set(registry.client.get_run(run_id).data.metrics) >= {"msp/ks_p", "msp/ood_rate", "n"}


def test_unreachable_mlflow_is_a_clear_bounded_error() -> None:
    uri = f"http://gradwatch:s3cret@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="does not answer") as raised:
        ThresholdRegistry(uri)
    assert time.monotonic() - started < 60
    assert "s3cret" not in str(raised.value)


def test_embedded_sqlite_default(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRADWATCH_MLFLOW_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry = ThresholdRegistry()
    assert registry.uri == "sqlite:///mlflow.db"
    proposed = _propose(registry, "local-model", "local-model@eeeeeeeeeeee")
    registry.approve(proposed.name, proposed.version, by="ana")
    assert registry.load_production("local-model", "local-model@eeeeeeeeeeee")[1].version == proposed.version
    assert (tmp_path / "mlflow.db").exists()


def test_credentials_are_redacted() -> None:
    assert redact("https://user:pw@mlflow.acme.io:5000/x") == "https://mlflow.acme.io:5000/x"
    assert redact("http://token@host/x and s3://bucket/a@b.jpg") == "http://host/x and s3://bucket/a@b.jpg"
    assert redact("flink_master=http://u:p@jobmanager:8081") == "flink_master=http://jobmanager:8081"
    assert redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


@pytest.mark.parametrize("by", ["", "   ", "\t\n"])
def test_a_blank_approver_is_refused(tmp_path, by: str) -> None:
    registry = ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proposed = _propose(registry, "blank-by", "blank-by@999999999999")
    with pytest.raises(RegistryError, match="--by must name who approves"):
        registry.approve(proposed.name, proposed.version, by=by)
    with pytest.raises(RegistryError, match="--by must name who rejects"):
        registry.reject(proposed.name, proposed.version, by=by, note="blurred reference")
    with pytest.raises(RegistryError, match="--note must say why"):
        registry.reject(proposed.name, proposed.version, by="ana", note="  ")
    unchanged = registry.get(proposed.name, proposed.version)
    assert (unchanged.status, unchanged.aliases) == ("proposed", ("candidate",))


def test_a_password_in_the_tracking_uri_is_never_printed(
    mlflow_server: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    uri = mlflow_server.replace("http://", "http://gradwatch:s3cret-token@")
    registry = ThresholdRegistry(uri)
    proposed = _propose(registry, "with-password", "with-password@123456789012")  # ends the calibration run
    registry.approve(proposed.name, proposed.version, by="ana")
    run_id = registry.start_monitoring_run("monitor feed", {"source": "s3://feed"})
    registry.end_run(run_id)
    registry.end_run(registry.start_monitoring_run("monitor feed", {"source": "s3://feed"}), failed=True)
    assert registry.client.get_run(run_id).info.status == "FINISHED"  # the server was reached with the URI
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text):
        assert "s3cret-token" not in text


def test_experiments_open_as_runs_tables_with_artifacts_beside_a_local_store(tmp_path, monkeypatch) -> None:
    from flows.registry import CALIBRATION_EXPERIMENT, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    store = tmp_path / "store"
    store.mkdir()
    registry = ThresholdRegistry(f"sqlite:///{store / 'mlflow.db'}")
    proposed = _propose(registry, "kind-model", "kind-model@ffffffffffff")
    experiment = registry.client.get_experiment_by_name(CALIBRATION_EXPERIMENT)
    # Without the tag MLflow 3's UI opens the experiment as a GenAI one: traces, "No data available".
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    assert (store / "mlartifacts").is_dir()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()
    assert registry.client.list_artifacts(proposed.run_id, "plots")


def test_an_experiment_made_before_the_kind_tag_gets_it(tmp_path) -> None:
    from flows.registry import CALIBRATION_EXPERIMENT, EXPERIMENT_KIND_TAG

    registry = ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.client.create_experiment(CALIBRATION_EXPERIMENT)
    _propose(registry, "old-store", "old-store@ffffffffffff")
    assert EXPERIMENT_KIND_TAG in registry.client.get_experiment_by_name(CALIBRATION_EXPERIMENT).tags


def test_a_proposal_carries_its_review_in_markdown_and_rounded_metrics(mlflow_server: str) -> None:
    registry = ThresholdRegistry(mlflow_server)
    proposed = _propose(registry, "described", "described@abababababab")
    run = registry.client.get_run(proposed.run_id)
    description = run.data.tags["mlflow.note.content"]
    assert f"version {proposed.version}: proposed" in description
    assert "400 reference images" in description
    assert "s3://feed/reference" in description
    assert "### Review checklist" in description
    assert "- [ ] " in description
    assert (
        f"`GRADWATCH_MLFLOW_URI={mlflow_server} gradwatch thresholds approve {proposed.version} --model described "
        "--by YOUR_NAME --note '...'`" in description
    )
    assert 'Do not use "Promote model"' in description
    version = registry.client.get_model_version(proposed.name, proposed.version)
    assert version.description == description
    # 16 digits in the UI were unreadable; the exact values stay in the calibration JSON.
    threshold = run.data.metrics["threshold_gradnorm"]
    assert threshold == float(f"{threshold:.4g}")
    exact = registry.calibration(proposed).threshold("gradnorm")
    assert threshold != exact
    assert threshold == pytest.approx(exact, rel=1e-3)


def test_review_links_point_at_the_run_and_the_version(mlflow_server: str, tmp_path) -> None:
    registry = ThresholdRegistry(mlflow_server)
    proposed = _propose(registry, "linked", "linked@cdcdcdcdcdcd")
    links = registry.review_links(proposed)
    experiment_id = registry.client.get_run(proposed.run_id).info.experiment_id
    # The query is what makes MLflow 3.17 open the runs table rather than its GenAI view (bench/mlflow_ui.py).
    assert links.experiment == f"{mlflow_server}/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert links.run == (
        f"{mlflow_server}/#/experiments/{experiment_id}/runs/{proposed.run_id}?workflowType=machine_learning"
    )
    assert links.version == f"{mlflow_server}/#/models/{proposed.name}/versions/{proposed.version}"
    assert links.start_ui is None
    local = ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    local_links = local.review_links(_propose(local, "linked", "linked@cdcdcdcdcdcd"))
    assert local_links.run.startswith("http://127.0.0.1:5000/#/experiments/")
    assert local_links.start_ui == f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'} --port 5000"


def test_a_production_alias_set_in_the_ui_is_recorded_at_monitor_time(mlflow_server: str, caplog) -> None:
    registry = ThresholdRegistry(mlflow_server)
    name = registered_model_name("ui-model")
    first = _propose(registry, "ui-model", "ui-model@121212121212", seed=1)
    registry.approve(name, first.version, by="ana")
    second = _propose(registry, "ui-model", "ui-model@121212121212", seed=2)
    # What the UI's "Add alias" does: the REST call, with no gradwatch tag beside it.
    registry.client.set_registered_model_alias(name, "production", second.version)
    _, loaded = registry.load_production("ui-model", "ui-model@121212121212")
    assert loaded.version == second.version
    assert loaded.status == "approved"
    assert loaded.tags["approved_via"] == "the production alias, set in the MLflow UI or API"
    assert loaded.tags["approved_by"].startswith("unknown")
    assert loaded.tags["approval_detected_at"]
    assert "superseded_at" in registry.get(name, first.version).tags
    assert "approved outside gradwatch" in caplog.text
    again = registry.load_production("ui-model", "ui-model@121212121212")[1]
    assert again.tags["approval_detected_at"] == loaded.tags["approval_detected_at"]  # recorded once


def test_a_rejected_version_given_the_production_alias_is_not_loaded(mlflow_server: str) -> None:
    registry = ThresholdRegistry(mlflow_server)
    name = registered_model_name("ui-rejected")
    proposed = _propose(registry, "ui-rejected", "ui-rejected@343434343434")
    registry.reject(name, proposed.version, by="ana", note="reference is from the old camera")
    registry.client.set_registered_model_alias(name, "production", proposed.version)
    with pytest.raises(NoApprovedThresholdError, match="was rejected \\(reference is from the old camera\\)"):
        registry.load_production("ui-rejected", "ui-rejected@343434343434")
