"""The gradwatch console script, run as a user runs it."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scoring.test_decoding import torchvision_loads

TINY = "tests.scoring.tiny_models:build"
REPO = Path(__file__).resolve().parents[2]


def _gradwatch(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    script = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    assert script, "the gradwatch console script is installed with the project"
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "cam-1").mkdir()
    for index in range(3):
        pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "cam-1" / f"frame-{index}.png")
    (tmp_path / "cam-1" / "empty.jpg").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return tmp_path


def test_version() -> None:
    result = _gradwatch("version")
    assert result.returncode == 0
    assert result.stdout.startswith("gradwatch 0.")


def test_score_images_prints_every_file_scored_or_rejected(tmp_path: Path) -> None:
    result = _gradwatch("score-images", str(_folder(tmp_path)), "--model", TINY, "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    for name in ("cam-1/frame-0.png", "cam-1/frame-2.png", "readme.txt"):
        assert name in result.stdout
    assert "rejected: empty" in result.stdout
    assert "rejected: not_an_image" in result.stdout
    assert ".DS_Store" not in result.stdout
    assert "5 files: 3 scored, 2 rejected (1 empty, 1 not_an_image)" in result.stderr


def test_score_images_csv_has_every_score(tmp_path: Path) -> None:
    result = _gradwatch("score-images", str(_folder(tmp_path)), "--model", TINY, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["file"] for row in rows] == [
        "cam-1/empty.jpg",
        "cam-1/frame-0.png",
        "cam-1/frame-1.png",
        "cam-1/frame-2.png",
        "readme.txt",
    ]
    scored = [row for row in rows if not row["rejected"]]
    assert len(scored) == 3
    assert all(float(row["gradnorm"]) > 0 and 0 < float(row["msp"]) <= 1 for row in scored)


def test_bad_folder_and_bad_model_exit_with_a_clear_error(tmp_path: Path) -> None:
    missing = _gradwatch("score-images", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "is not a folder" in missing.stderr
    bad_model = _gradwatch("score-images", str(tmp_path), "--model", "tests.scoring.tiny_models:nope")
    assert bad_model.returncode == 2
    assert "cannot import 'nope'" in bad_model.stderr


def test_score_runs_the_pipeline_and_reconciles(tmp_path: Path) -> None:
    out, feed = tmp_path / "out", tmp_path / "feed"
    feed.mkdir()
    result = _gradwatch("score", str(_folder(feed)), "--out", str(out), "--model", TINY, "--window", "30m")
    assert result.returncode == 0, result.stderr
    assert "reconciliation: 5 listed = 3 scored + 2 rejected: ok" in result.stderr
    assert "decode/empty 1, decode/not_an_image 1" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["rejected", "scores", "windows"]


def test_score_refuses_bad_options_before_running(tmp_path: Path) -> None:
    bad_window = _gradwatch("score", str(tmp_path), "--out", str(tmp_path / "o"), "--window", "hourly")
    assert bad_window.returncode == 2
    assert "not a duration like 1h" in bad_window.stderr
    bad_option = _gradwatch("score", str(tmp_path), "--out", str(tmp_path / "o"), "--beam-option", "flink_master")
    assert bad_option.returncode == 2
    assert "must be KEY=VALUE" in bad_option.stderr
    missing = _gradwatch("score", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--model", TINY)
    assert missing.returncode == 2
    assert "is not a folder, prefix or manifest" in missing.stderr
    if not torchvision_loads():
        source, out = str(_folder(tmp_path)), str(tmp_path / "o")
        no_decoder = _gradwatch("score", source, "--out", out, "--decoder", "device", "--model", TINY)
        assert no_decoder.returncode == 2
        assert "or use decoder='host'" in no_decoder.stderr
        assert not (tmp_path / "o").exists()


def _reference_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"ref-{index:03d}.png")
    return root


def test_calibrate_then_review_in_mlflow(tmp_path: Path, mlflow_server: str, monkeypatch) -> None:
    monkeypatch.setenv("GRADWATCH_MLFLOW_URI", mlflow_server)
    reference = _reference_folder(tmp_path / "reference", 60)
    shifted = _reference_folder(tmp_path / "shifted", 30)
    result = _gradwatch(
        "calibrate", str(reference), "--model", TINY, "--min-window", "20", "--validation-ood", str(shifted)
    )
    assert result.returncode == 0, result.stderr
    assert "proposed gradwatch-threshold-build version" in result.stdout
    assert "gradwatch thresholds approve" in result.stdout
    assert "vs shifted: AUROC" in result.stdout
    version = result.stdout.split("version ")[1].split()[0]

    assert f"{mlflow_server}/#/experiments/" in result.stdout  # where to open the run

    shown = _gradwatch("thresholds", "show", version, "--model", TINY)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    # Everything a reviewer decides on: bounds, the held-out check, separation, the lead score, status, links.
    assert "thresholds (per image)" in text
    assert re.search(r"\n  gradnorm +threshold [0-9.e+-]+ \(higher = in distribution\)\n", text)
    assert "false alarms on held-out healthy windows\n  not checked" in text
    assert re.search(r"gradnorm +vs shifted: AUROC [01]\.\d{3}, FPR95", text)
    assert "lead score   " in text
    assert "the recommended score" in text
    assert f"MLflow run   {mlflow_server}/#/experiments/" in text
    # GRADWATCH_MLFLOW_URI already names the store here, so the commands need no prefix to find it.
    assert f"review\n  proposed (alias candidate)\n  approve: gradwatch thresholds approve {version} --model " in text
    record = json.loads(_gradwatch("thresholds", "show", version, "--model", TINY, "--json").stdout)
    assert record["status"] == "proposed"
    assert record["recommended_score"] == record["lead_score"]
    assert {entry["dataset"] for entry in record["validation"]} == {"shifted"}
    assert record["thresholds"]["gradnorm"]["side"] == "low"
    policy = record["decision"]
    # What a reviewer approves besides thresholds: when a drift pages, how accuracy is estimated, the CUSUM's limit.
    assert policy["severity"].startswith("page when the estimated accuracy drop is at least 3 points")
    assert policy["accuracy"].startswith("no labels")
    # 60 images hold out 20, too few for a window of the check: the CUSUM's limit cannot be fitted, and it says so.
    assert policy["sequential"].startswith("none: no held-out window")
    assert policy["false_alarm_checks"] == []
    assert any("were not checked" in warning for warning in policy["warnings"])

    listing = _gradwatch("thresholds", "list", "--model", TINY)
    assert listing.returncode == 0
    assert "proposed" in listing.stdout
    assert "candidate" in listing.stdout
    approved = _gradwatch("thresholds", "approve", version, "--by", "ana", "--note", "ok", "--model", TINY)
    assert approved.returncode == 0, approved.stderr
    assert '"status": "approved"' in approved.stdout
    assert '"production"' in approved.stdout
    refused = _gradwatch("thresholds", "reject", version, "--by", "ana", "--model", TINY)
    assert refused.returncode == 2
    assert "needs --note" in refused.stderr


def test_thresholds_with_mlflow_down_fail_fast(tmp_path: Path, monkeypatch) -> None:
    from tests.flows.conftest import free_port

    monkeypatch.setenv("GRADWATCH_MLFLOW_URI", f"http://127.0.0.1:{free_port()}")
    result = _gradwatch("thresholds", "list")
    assert result.returncode == 2
    assert "does not answer" in result.stderr


def test_monitor_scores_each_window_on_the_runner_and_options_given(tmp_path: Path, monkeypatch) -> None:
    from flows.registry import MONITORING_EXPERIMENT, ThresholdRegistry
    from tests.flows.test_monitor import START, _approve, _noise

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("GRADWATCH_MLFLOW_URI", mlflow_uri)
    registry = ThresholdRegistry(mlflow_uri)
    _approve(registry, tmp_path)
    for index in range(25):
        _noise(tmp_path / "feed" / f"{index}.png", index, START + dt.timedelta(minutes=index))
    window = ("--since", START.isoformat(), "--until", (START + dt.timedelta(hours=1)).isoformat())
    common = ("monitor", str(tmp_path / "feed"), "--out", str(tmp_path / "out"), "--model", TINY, *window)

    unknown = _gradwatch(*common, "--runner", "NoSuchRunner")
    assert unknown.returncode == 2
    assert "--runner 'NoSuchRunner' is not a Beam runner" in unknown.stderr
    assert not (tmp_path / "out").exists()  # refused before any window

    options = ("--beam-option", "job_name=gradwatch-runner-test", "--beam-option", "direct_num_workers=1")
    result = _gradwatch(*common, "--runner", "BundleBasedDirectRunner", *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{START:%Y-%m-%d %H:%M}  ok")  # each window's line, as it is decided
    assert "1 window(s) processed" in result.stdout
    (run,) = registry.client.search_runs([registry.client.get_experiment_by_name(MONITORING_EXPERIMENT).experiment_id])
    assert run.data.params["runner"] == "BundleBasedDirectRunner"
    assert run.data.params["beam_options"] == "job_name=gradwatch-runner-test direct_num_workers=1"
    # A run with nothing new to do said nothing at all but "0 window(s) processed".
    again = _gradwatch(*common)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to do: every complete window of ")
    assert f"before {START + dt.timedelta(hours=1):%Y-%m-%dT%H:%M:%S}" in again.stdout


def test_deploy_refuses_credentials_in_beam_options(tmp_path: Path) -> None:
    result = _gradwatch(
        "deploy", str(tmp_path), "--out", str(tmp_path / "out"), "--beam-option", "s3_secret_access_key=wJalrXUtnFEMI"
    )
    assert result.returncode == 2
    assert "--beam-option s3_secret_access_key carries a credential" in result.stderr
    assert "wJalrXUtnFEMI" not in result.stderr + result.stdout


def test_thresholds_refuse_a_blank_approver_before_reaching_mlflow(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRADWATCH_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for action in ("approve", "reject"):
        for by in ("", "  "):
            result = _gradwatch("thresholds", action, "1", "--by", by, "--note", "why")
            assert result.returncode == 2
            assert "--by: must name who decides" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


# A module named like a dependency, left in the directory an operator runs gradwatch from.
HOSTILE = """import pathlib
pathlib.Path(__file__).with_name("HOSTILE_RAN").write_text("imported")
raise SystemExit("hostile datasketches.py imported")
"""
FACTORY = """import torch
from torch import nn


def build() -> nn.Module:
    torch.manual_seed(0)  # launcher and workers build the same weights
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
"""


def test_only_a_factory_spec_imports_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "datasketches.py").write_text(HOSTILE)
    (tmp_path / "cam_models.py").write_text(FACTORY)
    (tmp_path / "empty").mkdir()
    (tmp_path / "feed").mkdir()
    _folder(tmp_path / "feed")
    default = _gradwatch("score", "empty", "--out", "out-default", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    # Beam's local worker processes start with python -m, which puts the working directory first on sys.path.
    factory = _gradwatch(
        "score", "feed", "--out", "out-factory", "--model", "cam_models:build", "--workers", "2", cwd=tmp_path
    )
    assert factory.returncode == 0, factory.stderr
    assert "reconciliation: 5 listed = 3 scored + 2 rejected: ok" in factory.stderr
    assert "model      build@" in factory.stderr
    assert not (tmp_path / "HOSTILE_RAN").exists()


def test_calibrate_on_a_reference_where_nothing_decodes_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    for index in range(60):
        (reference / f"{index}.png").write_text(f"not an image {index}")
    script = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [script, "calibrate", str(reference), "--model", TINY],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "GRADWATCH_MLFLOW_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: reference {reference}: none of the 18 images to fit scores on decodes" in result.stderr


def test_score_takes_the_earliest_plausible_event_time_from_the_command_line(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "archive.png")
    (tmp_path / "m.csv").write_text("uri,event_time\narchive.png,1995-06-01T10:00:00Z\n")
    default = _gradwatch("score", str(tmp_path / "m.csv"), "--out", str(tmp_path / "a"), "--model", TINY)
    assert default.returncode == 0, default.stderr
    assert "0 scored + 1 rejected" in default.stderr + default.stdout
    archive = _gradwatch(
        "score", str(tmp_path / "m.csv"), "--out", str(tmp_path / "b"), "--model", TINY,
        "--earliest-event-time", "1990-01-01",
    )  # fmt: skip
    assert archive.returncode == 0, archive.stderr
    assert "1 scored + 0 rejected" in archive.stderr + archive.stdout
    bad = _gradwatch("score", str(tmp_path / "m.csv"), "--out", str(tmp_path / "c"), "--earliest-event-time", "soon")
    assert bad.returncode == 2
    assert "'soon'" in bad.stderr


def _python(script: str) -> subprocess.CompletedProcess[str]:
    """Run a script in a fresh interpreter from the repository root (what it imports, how it logs, are its own)."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_help_answers_without_importing_torch() -> None:
    # Importing torch takes seconds: `gradwatch --help` and each command's help paid it before it was lazy.
    probe = (
        "import sys\nfrom flows.cli import main\n"
        "for argv in (['--help'], ['monitor', '--help'], ['calibrate', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = [name for name in ('torch', 'apache_beam', 'mlflow', 'prefect') if name in sys.modules]\n"
        "print('imported:', heavy)\n"
    )
    result = _python(probe)
    assert result.stdout.splitlines()[-1] == "imported: []"


def test_since_and_until_errors_name_the_flag(tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    unparseable = _gradwatch("monitor", str(tmp_path), "--out", out, "--since", "yesterday")
    assert unparseable.returncode == 2
    assert "--since 'yesterday' is not a time" in unparseable.stderr
    assert "event_time" not in unparseable.stderr
    reversed_range = _gradwatch("score", str(tmp_path), "--out", out, "--since", "2026-11-02", "--until", "2026-11-01")
    assert reversed_range.returncode == 2
    assert "--since 2026-11-02T00:00:00+00:00 is not before --until 2026-11-01T00:00:00+00:00" in reversed_range.stderr
    check = _gradwatch("thresholds", "check", "1", "--against", out, "--until", "soon")
    assert check.returncode == 2
    assert "--until 'soon' is not a time" in check.stderr
    assert not Path(out).exists()


def test_scores_progress_counts_up_to_the_images_source_lists(tmp_path: Path) -> None:
    from rich.console import Console

    from flows.cli import _run_with_progress
    from pipelines.pipeline import ScoringConfig
    from scoring import ScoringSettings

    (tmp_path / "feed").mkdir()
    folder = _folder(tmp_path / "feed")

    def config(progress: str) -> ScoringConfig:
        (tmp_path / progress).mkdir()
        return ScoringConfig(
            source=str(folder), out=str(tmp_path / "out"), scoring=ScoringSettings(model=TINY),
            progress_dir=str(tmp_path / progress),
        )  # fmt: skip

    # A warm process, as in a whole test session: the model loaded and exported once, the run over in under half a
    # second, which once ended before the bar polled the count.
    _run_with_progress(config("warm-up"), Console(file=io.StringIO(), force_terminal=True, width=120))
    shown = io.StringIO()
    summary = _run_with_progress(config("progress"), Console(file=shown, force_terminal=True, width=120))
    bars = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.getvalue())
    # The total is counted beside the pipeline, and the bar shows it before the run ends.
    assert summary.listed == 5  # three frames, an empty file and a text file; hidden files are not listed
    assert re.search(r"\b0/5\b", bars), bars[-500:]
    assert "5/5" in bars


def test_report_refuses_an_out_that_holds_no_outputs(tmp_path: Path) -> None:
    mistyped = tmp_path / "ouy"
    result = _gradwatch("report", str(mistyped))
    assert result.returncode == 2
    assert f"OUT '{mistyped}' holds none of gradwatch's outputs" in result.stderr
    assert not mistyped.exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_a_library_that_sets_its_own_loggers_level_stays_silent_unless_verbose(verbose: bool) -> None:
    # Great Expectations sets one of its module loggers to INFO, under the level set on its package: the demo and
    # every monitor run printed "Created temporary directory ... for ephemeral docs site".
    script = (
        "from flows.cli import configure_logging\n"
        f"configure_logging(verbose={verbose})\n"
        "from flows.quality import Gates\n"
        "Gates()\n"
        "import logging\n"
        "logging.getLogger('flows.quality').warning('our own warning')\n"
    )
    ran = _python(script)
    assert ("ephemeral docs site" in ran.stderr) is verbose
    assert ("apitools not found" in ran.stderr) is verbose
    assert "our own warning" in ran.stderr


def test_library_chatter_is_silent_unless_verbose(tmp_path: Path, monkeypatch) -> None:
    # Beam's import-time "apitools not found" and MLflow's database migration lines reached every report.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    quiet = _gradwatch("report", str(tmp_path / "nothing"))
    assert quiet.stderr.splitlines() == [quiet.stderr.splitlines()[-1]]
    assert quiet.stderr.startswith("error: OUT")
    verbose = _gradwatch("report", str(tmp_path / "nothing"), "-v")
    assert "apitools not found" in verbose.stderr
