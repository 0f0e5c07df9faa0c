"""Temporary folders: removed when a run ends or fails, and swept by the next run when one was killed (SIGKILL)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.calibrate import calibrate_reference
from flows.registry import ThresholdRegistry
from flows.scratch import owned_temp_dir
from scoring import GradwatchError, ScoringSettings
from scoring.calibration import CalibrationConfig

TINY = "tests.scoring.tiny_models:build"
REPO = Path(__file__).resolve().parents[2]
# Makes an owned folder, says where, then waits to be killed (or for stdin to close).
OWNER = """import sys
from flows.scratch import owned_temp_dir
with owned_temp_dir(sys.argv[1]) as folder:
    print(folder, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder of the test's own, for this process (tempfile caches it) and the processes it starts."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _owner(purpose: str) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", OWNER, purpose], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def _images(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    return folder


def _leftovers(root: Path, purpose: str) -> list[str]:
    return sorted(path.name for path in root.glob(f"gradwatch-{purpose}-*"))


def test_a_killed_runs_folder_is_swept_and_a_live_runs_is_kept(temp_root: Path) -> None:
    killed, stale = _owner("calibrate")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert stale.is_dir()  # SIGKILL left it
    other, elsewhere = _owner("progress")
    assert stale.is_dir()  # another purpose's runs sweep only their own
    live, running = _owner("calibrate")
    try:
        assert not stale.exists()  # the next calibrate-folder's owner swept it
        with owned_temp_dir("calibrate") as mine:
            assert mine.is_dir()
            assert running.is_dir()  # its owner is alive
            assert elsewhere.is_dir()  # another purpose is swept by runs of that purpose
        assert not mine.exists()
    finally:
        for process in (live, other):
            process.communicate(timeout=30)  # closes stdin: the owner exits and removes its folder
    assert _leftovers(temp_root, "calibrate") == []
    assert _leftovers(temp_root, "progress") == []


def _gradwatch(*args: str) -> list[str]:
    script = shutil.which("gradwatch", path=str(Path(sys.executable).parent))
    assert script, "the gradwatch console script is installed with the project"
    return [script, *args]


def test_score_killed_mid_run_leaves_nothing_once_the_next_run_ends(tmp_path: Path, temp_root: Path) -> None:
    feed = _images(tmp_path / "feed", 40)
    command = _gradwatch("score", str(feed), "--out", str(tmp_path / "out"), "--model", TINY)
    killed = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _leftovers(temp_root, "progress") and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL, "the run was killed while scoring"
    assert len(_leftovers(temp_root, "progress")) == 1
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _leftovers(temp_root, "progress") == []


def test_score_that_fails_removes_its_folder(tmp_path: Path, temp_root: Path) -> None:
    feed = _images(tmp_path / "feed", 3)
    command = _gradwatch(
        "score", str(feed), "--out", str(tmp_path / "out"), "--model", "tests.scoring.tiny_models:nope"
    )
    failed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2
    assert "cannot import 'nope'" in failed.stderr
    assert _leftovers(temp_root, "progress") == []


def test_calibrate_removes_its_folder_whether_it_succeeds_or_fails(tmp_path: Path, temp_root: Path) -> None:
    registry = ThresholdRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = CalibrationConfig(min_window=20, check_windows=20, check_window_sizes=(20,))
    scoring = ScoringSettings(model=TINY)
    reference = str(_images(tmp_path / "reference", 60))
    version, _ = calibrate_reference(reference, registry=registry, scoring=scoring, config=config)
    assert version.status == "proposed"
    assert _leftovers(temp_root, "calibrate") == []
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for index in range(5):
        (unreadable / f"{index}.png").write_bytes(b"not an image")
    with pytest.raises(GradwatchError, match=r"could be scored.*calibrate with --out DIR to keep DIR/rejected"):
        calibrate_reference(
            reference, registry=registry, scoring=scoring, config=config, validation_ood=[str(unreadable)]
        )
    assert _leftovers(temp_root, "calibrate") == []
