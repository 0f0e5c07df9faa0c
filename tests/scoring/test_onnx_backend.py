"""The ONNX Runtime backend: the same scores as torch, its export cached and checked, and torch where it cannot run."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli_options import scoring_parent, scoring_settings
from scoring import DEFAULT_MODEL, GradwatchError, ScoringSettings, load_model, load_scorer
from scoring.onnx_backend import BackendUnavailableError, cached_export_path, network_threads, select_forward
from scoring.properties import input_properties, registered_properties
from scoring.scorer import CPU_PROPERTIES_CHUNK
from tests.scoring.tiny_models import TinyClassifier

TINY = "tests.scoring.tiny_models:build"
# Backends round the network's float32 arithmetic differently; the scores are held to this, relative.
SCORES_AGREE = 1e-5


class UsesBatchSize(TinyClassifier):
    """Scales its features by the batch size as a Python int, which tracing freezes at the export's batch size."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.hidden(self.body(images))) * len(images)
        return self.classifier(features)


class Unexportable(TinyClassifier):
    """Runs an op the ONNX exporter has no translation for."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.special.bessel_j0(self.hidden(self.body(images))))


def build_uses_batch_size() -> UsesBatchSize:
    return UsesBatchSize()


def build_unexportable() -> Unexportable:
    return Unexportable()


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[int]:
    """An onnxruntime scorer leaves torch one thread: the tests after these get theirs back."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def logged_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the backend's once-per-process lines: an earlier test in the process (the handler's fallback
    in tests/pipelines) had logged "onnxruntime does not import", and the suite's run then saw nothing here."""
    from scoring import onnx_backend

    monkeypatch.setattr(onnx_backend, "_LOGGED", set())


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GRADWATCH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the real exporter's runs."""
    calls: list[int] = []
    export = torch.onnx.export

    def counted(*args, **kwargs):
        calls.append(1)
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counted)
    return calls


def encoded_images(count: int, size: tuple[int, int] = (300, 260)) -> list[bytes]:
    """JPEGs of smooth colour gradients with noise, as varied as photographs in what a network sees."""
    generator = np.random.default_rng(7)
    images = []
    for _ in range(count):
        _, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
        base = np.stack([np.sin(x * generator.uniform(1, 9) + channel) for channel in range(3)], axis=-1)
        pixels = np.clip((base * 0.5 + 0.5) * 255 + generator.normal(0, 20, (*base.shape,)), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def assert_scores_agree(torch_scores: dict[str, np.ndarray], onnx_scores: dict[str, np.ndarray], names: list[str]):
    for name in names:
        relative = np.abs(onnx_scores[name] - torch_scores[name]) / np.abs(torch_scores[name])
        assert np.all(relative <= SCORES_AGREE), f"{name} differs by {relative.max():.1e} relative"
    np.testing.assert_array_equal(onnx_scores["pred"], torch_scores["pred"])


def as_columns(results: list) -> dict[str, np.ndarray]:
    return {name: np.array([result[name] for result in results]) for name in results[0]}


def test_tiny_model_scores_as_torch_does(cache_dir: Path) -> None:
    on_torch = load_scorer(TINY, device="cpu", backend="torch")
    on_onnx = load_scorer(TINY, device="cpu", backend="onnxruntime")
    assert (on_torch.backend, on_onnx.backend) == ("torch", "onnxruntime")
    images = encoded_images(9)
    sources = [f"image-{index}.jpg" for index in range(len(images))]
    batch = torch.stack([on_torch.preprocess(image) for image in images])
    torch_scores, onnx_scores = on_torch.score(batch), on_onnx.score(batch)
    assert_scores_agree(torch_scores, onnx_scores, on_torch.score_names)
    # Measured a chunk at a time on the properties' threads and this one on onnxruntime, on this one on torch.
    for name in registered_properties("input"):
        np.testing.assert_allclose(onnx_scores[name], torch_scores[name], rtol=1e-6, err_msg=name)
    torch_encoded = as_columns(on_torch.score_encoded(images, sources=sources))
    assert_scores_agree(torch_encoded, as_columns(on_onnx.score_encoded(images, sources=sources)), on_torch.score_names)
    assert [path.suffix for path in (cache_dir / "onnx").iterdir()] == [".onnx"]


def test_the_properties_are_measured_on_the_pixels_the_model_reads(cache_dir: Path) -> None:
    """Both backends fold the normalisation into the properties: undone by hand here, with the preprocessing's own
    per-channel mean and std (a swap of the two would move brightness by a third). More images than two of the
    properties' chunks: each image's properties stay on its row."""
    images = encoded_images(2 * CPU_PROPERTIES_CHUNK + 5)
    for backend in ("torch", "onnxruntime"):
        scorer = load_scorer(TINY, device="cpu", backend=backend)
        batch = torch.stack([scorer.preprocess(image) for image in images])
        std, mean = (torch.tensor(side).view(3, 1, 1) for side in (scorer.preprocessing.std, scorer.preprocessing.mean))
        expected = input_properties(batch * std + mean)
        measured = scorer.score(batch)
        for name, values in expected.items():
            np.testing.assert_allclose(measured[name], values.double().numpy(), rtol=1e-5, err_msg=f"{backend} {name}")


def test_a_batch_that_fails_leaves_no_chunk_queued_for_the_properties_threads(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = load_scorer(TINY, device="cpu", backend="onnxruntime", forward_chunk=1)
    batch = torch.stack([scorer.preprocess(image) for image in encoded_images(6)])
    measured_chunks: list[int] = []
    measure = scorer._chunk_properties
    monkeypatch.setattr(scorer, "_chunk_properties", lambda chunk: measured_chunks.append(len(chunk)) or measure(chunk))

    def fails(heads: list) -> dict:
        raise RuntimeError("a score failed")

    monkeypatch.setattr(scorer, "_columns", fails)
    pool = scorer._properties_pool()
    # Every properties thread held, so each of the batch's chunks is still queued when its scores fail.
    release = threading.Event()
    held = [pool.submit(release.wait) for _ in range(pool._max_workers)]
    with pytest.raises(RuntimeError, match="a score failed"):
        scorer.score(batch)
    release.set()
    for future in held:
        future.result()
    pool.submit(lambda: None).result()  # queued behind anything the batch left
    assert measured_chunks == []


def test_default_model_scores_as_torch_does() -> None:
    on_torch = load_scorer(DEFAULT_MODEL, device="cpu", backend="torch")
    on_auto = load_scorer(DEFAULT_MODEL, device="cpu")
    assert on_auto.backend == "onnxruntime"  # what "auto" takes on a CPU with onnxruntime installed
    images = encoded_images(8)
    sources = [f"image-{index}.jpg" for index in range(len(images))]
    expected = as_columns(on_torch.score_encoded(images, sources=sources))
    assert_scores_agree(expected, as_columns(on_auto.score_encoded(images, sources=sources)), on_torch.score_names)


def test_onnxruntime_takes_torchs_threads_and_torch_keeps_one() -> None:
    torch.set_num_threads(2)
    load_scorer(TINY, device="cpu", backend="onnxruntime")
    assert torch.get_num_threads() == 1
    assert network_threads() == 2  # what a second scorer's session and decoding threads get


def test_a_second_load_reuses_the_cached_export(exports: list[int]) -> None:
    first = load_scorer(TINY, device="cpu", backend="onnxruntime")
    path = cached_export_path(load_model(TINY), TINY)
    written = path.stat().st_mtime_ns
    second = load_scorer(TINY, device="cpu", backend="onnxruntime")
    assert len(exports) == 1
    assert path.stat().st_mtime_ns == written
    batch = torch.stack([first.preprocess(image) for image in encoded_images(3)])
    np.testing.assert_array_equal(first.score(batch)["gradnorm"], second.score(batch)["gradnorm"])


def test_a_weights_file_keeps_its_export_beside_it(tmp_path: Path, cache_dir: Path) -> None:
    weights = tmp_path / "models" / "best.pth"
    weights.parent.mkdir()
    torch.save(TinyClassifier(seed=3).state_dict(), weights)
    spec = f"{TINY}?weights={weights}"
    scorer = load_scorer(spec, device="cpu", backend="onnxruntime")
    assert [path.name for path in weights.parent.glob("*.onnx")] == [cached_export_path(load_model(spec), spec).name]
    assert not cache_dir.exists()
    assert scorer.backend == "onnxruntime"


def test_a_truncated_cached_export_is_exported_again(exports: list[int], caplog: pytest.LogCaptureFixture) -> None:
    load_scorer(TINY, device="cpu", backend="onnxruntime")
    path = cached_export_path(load_model(TINY), TINY)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="scoring.onnx_backend"):
        scorer = load_scorer(TINY, device="cpu", backend="onnxruntime")
    assert scorer.backend == "onnxruntime"
    assert len(exports) == 2
    assert "is unusable" in caplog.text
    assert path.read_bytes() == whole


def test_a_cached_export_of_another_graph_is_exported_again(exports: list[int]) -> None:
    """Same weights, same name, another architecture: the probe batch tells them apart."""
    load_scorer(TINY, device="cpu", backend="onnxruntime")
    tiny_path = cached_export_path(load_model(TINY), TINY)
    other = load_model("tests.scoring.test_onnx_backend:build_uses_batch_size")
    other_path = cached_export_path(other, "tests.scoring.test_onnx_backend:build_uses_batch_size")
    other_path.write_bytes(tiny_path.read_bytes())  # the tiny model's graph where this one's export is looked for
    with pytest.raises(BackendUnavailableError, match="differ from torch's"):
        load_scorer("tests.scoring.test_onnx_backend:build_uses_batch_size", device="cpu", backend="onnxruntime")
    assert len(exports) == 2  # the unusable cached graph was exported again, and that export was refused too


def test_auto_falls_back_to_torch_where_the_model_does_not_export(caplog: pytest.LogCaptureFixture) -> None:
    spec = "tests.scoring.test_onnx_backend:build_unexportable"
    with caplog.at_level(logging.WARNING, logger="scoring.onnx_backend"):
        assert load_scorer(spec, device="cpu").backend == "torch"
    assert "runs on torch, not onnxruntime" in caplog.text
    assert "does not export to ONNX" in caplog.text
    with pytest.raises(BackendUnavailableError, match=r"--backend onnxruntime cannot score .* --backend torch"):
        load_scorer(spec, device="cpu", backend="onnxruntime")


def test_without_onnxruntime_auto_runs_torch_and_the_flag_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime then raises ImportError
    with caplog.at_level(logging.WARNING, logger="scoring.onnx_backend"):
        scorer = load_scorer(TINY, device="cpu")
    assert scorer.backend == "torch"
    assert "onnxruntime does not import" in caplog.text
    batch = torch.stack([scorer.preprocess(image) for image in encoded_images(2)])
    assert np.all(np.isfinite(scorer.score(batch)["gradnorm"]))
    with pytest.raises(BackendUnavailableError, match=r"--backend onnxruntime .*pip install 'gradwatch\[onnx\]'"):
        load_scorer(TINY, device="cpu", backend="onnxruntime")


def test_auto_runs_torch_in_half_precision_compiled_or_on_a_gpu() -> None:
    loaded = load_model(TINY)
    for settings, device in (
        (ScoringSettings(model=TINY, precision="fp16"), "cpu"),
        (ScoringSettings(model=TINY, compile=True), "cpu"),
        (ScoringSettings(model=TINY), "cuda"),
    ):
        backend, forward = select_forward(loaded, settings, torch.device(device))
        assert backend == "torch"
        assert forward is loaded.forward_to_head
    with pytest.raises(BackendUnavailableError, match=r"the device is cuda.*--backend torch"):
        select_forward(loaded, ScoringSettings(model=TINY, backend="onnxruntime"), torch.device("cuda"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "fp16"], "--backend onnxruntime runs in fp32 only, not --precision fp16"),
        (["--compile"], "drop --compile, or pass --backend torch"),
    ],
)
def test_the_flag_refuses_what_onnxruntime_does_not_run(flags: list[str], message: str) -> None:
    args = scoring_parent().parse_args(["--backend", "onnxruntime", *flags])
    with pytest.raises(GradwatchError, match=message):
        scoring_settings(args)
    assert scoring_settings(scoring_parent().parse_args(["--backend", "torch", *flags])).backend == "torch"


def test_the_backend_is_recorded_but_does_not_refuse_thresholds() -> None:
    on_torch = ScoringSettings(backend="torch")
    assert on_torch.recorded()["backend"] == "torch"
    assert ScoringSettings(backend="onnxruntime").mismatch(on_torch.recorded()) is None
    assert ScoringSettings(backend="onnxruntime").mismatch({"precision": "fp32"}) is None


def test_a_batch_of_another_size_than_the_export_runs_on_torch(exports: list[int]) -> None:
    """The export is traced and checked at the preprocessing's size: another size gets torch's exact answer."""
    scorer = load_scorer(TINY, device="cpu", backend="onnxruntime")
    images = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(4))
    expected = load_scorer(TINY, device="cpu", backend="torch").score(images)
    np.testing.assert_allclose(scorer.score(images)["gradnorm"], expected["gradnorm"], rtol=SCORES_AGREE)
    assert len(exports) == 1


@pytest.mark.parametrize(("backend", "runs_on_onnxruntime"), [("onnxruntime", True), ("torch", False)])
def test_full_precision_batches_run_on_the_backend_chosen(
    backend: str, runs_on_onnxruntime: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scorer that chose onnxruntime ran fp32 batches on torch, and would have sent half precision to onnxruntime:
    # the scores agree either way, so only the session's own calls tell.
    from scoring.onnx_backend import OnnxRuntimeForward

    sessions_run = []
    run = OnnxRuntimeForward.__call__

    def counted(self: OnnxRuntimeForward, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sessions_run.append(len(batch))
        return run(self, batch)

    scorer = load_scorer(TINY, device="cpu", backend=backend)
    monkeypatch.setattr(OnnxRuntimeForward, "__call__", counted)
    images = encoded_images(5)
    scorer.score(torch.stack([scorer.preprocess(image) for image in images]))
    assert (sum(sessions_run) == len(images)) is runs_on_onnxruntime
