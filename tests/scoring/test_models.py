"""Model specs: built-in, factory, TorchScript, weights files, heads, ids and their errors."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from scoring import ModelSpecError, Scorer, load_scorer, resolve_device
from tests.scoring.tiny_models import ReturnsFeatures, TinyClassifier

TINY = "tests.scoring.tiny_models:build"


def _images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_default_model_id_names_the_weights(efficientnet: Scorer) -> None:
    assert re.fullmatch(r"efficientnet-lite0@[0-9a-f]{12}", efficientnet.model_id)
    assert efficientnet.head is efficientnet.model._fc
    assert efficientnet.preprocessing.interpolation == "bicubic"


def test_factory_head_is_the_last_linear(tiny: Scorer) -> None:
    assert tiny.head is tiny.model.classifier
    assert re.fullmatch(r"build@[0-9a-f]{12}", tiny.model_id)
    assert not tiny.model.training


def test_head_can_be_named_in_the_spec_or_as_argument() -> None:
    assert load_scorer(f"{TINY}?head=hidden", device="cpu").head.out_features == 8
    assert load_scorer(TINY, head="hidden", device="cpu").head.out_features == 8


def test_unknown_head_lists_the_linear_layers() -> None:
    with pytest.raises(ModelSpecError, match=r"no nn.Linear named 'fc'.*'hidden', 'classifier'"):
        load_scorer(f"{TINY}?head=fc", device="cpu")


def test_model_without_linear_head_is_refused() -> None:
    with pytest.raises(ModelSpecError, match=r"no nn\.Linear layer"):
        load_scorer("tests.scoring.tiny_models:build_without_linear", device="cpu")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.scoring.tiny_models:build_not_a_module", "not a torch.nn.Module"),
        ("tests.scoring.tiny_models:missing", "cannot import 'missing'"),
        ("no_such_package.models:build", "cannot import"),
        (f"{TINY}?heads=classifier", "unknown options"),
        ("/nonexistent/model.pt", "no file exists"),
        ("", "empty model spec"),
        ("torchvision_not_installed_here:resnet50", "cannot import"),
    ],
)
def test_bad_specs_say_what_to_do(spec: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        load_scorer(spec, device="cpu")


def test_weights_file_is_loaded_and_changes_the_model_id(tmp_path, tiny: Scorer) -> None:
    other = TinyClassifier(seed=7)
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in other.state_dict().items()}}, path)
    scorer = load_scorer(f"{TINY}?weights={path}", device="cpu")
    assert scorer.model_id != tiny.model_id
    torch.testing.assert_close(scorer.model.classifier.weight, other.classifier.weight)


def test_weights_are_loaded_without_unpickling_code(tmp_path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"classifier.weight": torch.zeros(5, 8), "callback": print}, path)
    with pytest.raises(ModelSpecError, match="weights_only=True"):
        load_scorer(f"{TINY}?weights={path}", device="cpu")


def test_weights_that_do_not_fit_are_refused(tmp_path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"classifier.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ModelSpecError, match="does not fit the architecture"):
        load_scorer(TINY, weights=path, device="cpu")


def test_torchscript_returning_features_scores_like_the_eager_model(tmp_path, tiny: Scorer) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.script(ReturnsFeatures(TinyClassifier())).save(str(path))
    scripted = load_scorer(str(path), device="cpu")
    assert scripted.model_id.startswith("tiny@")
    images = _images()
    expected = tiny.score(images)
    for name, column in scripted.score(images).items():
        np.testing.assert_allclose(column, expected[name], rtol=1e-6, err_msg=name)


def test_exported_program_scores_like_the_eager_model(tmp_path, tiny: Scorer) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(TinyClassifier().eval(), (_images(),), dynamic_shapes=({0: batch},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    exported = load_scorer(str(path), device="cpu")
    assert exported.model_id.startswith("tiny@")
    images = _images(count=6, seed=3)
    expected = tiny.score(images)
    for name, column in exported.score(images).items():
        np.testing.assert_allclose(column, expected[name], rtol=1e-6, err_msg=name)
    assert load_scorer(f"{path}?head=hidden", device="cpu").head.weight.shape == (8, 6)


def test_torchscript_returning_only_logits_is_explained(tmp_path) -> None:
    path = tmp_path / "logits_only.pt"
    torch.jit.script(TinyClassifier()).save(str(path))
    scorer = load_scorer(str(path), device="cpu")
    with pytest.raises(ModelSpecError, match=r"returns \(logits, features\)"):
        scorer.score(_images())


def test_a_state_dict_given_as_model_file_points_to_weights(tmp_path) -> None:
    path = tmp_path / "state.pth"
    torch.save(TinyClassifier().state_dict(), path)
    with pytest.raises(ModelSpecError, match=r"module.path:factory\?weights="):
        load_scorer(str(path), device="cpu")


def test_preprocessing_options_in_the_spec() -> None:
    scorer = load_scorer(f"{TINY}?resize=40&crop=32&mean=0.5,0.5,0.5&std=0.25,0.25,0.25", device="cpu")
    prep = scorer.preprocessing
    assert (prep.resize, prep.crop, prep.mean, prep.std) == (40, 32, (0.5,) * 3, (0.25,) * 3)


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_threads_sharing_one_scorer_get_their_own_features(tiny: Scorer) -> None:
    batches = [_images(count=3 + index, seed=index) for index in range(8)]
    sequential = [tiny.score(batch)["gradnorm"] for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda batch: tiny.score(batch)["gradnorm"], batches * 4))
    for index, scores in enumerate(concurrent):
        np.testing.assert_allclose(scores, sequential[index % 8], rtol=1e-6)


def test_a_head_used_twice_is_refused() -> None:
    scorer = load_scorer("tests.scoring.tiny_models:build_two_views", device="cpu")
    with pytest.raises(ModelSpecError, match="ran 2 times"):
        scorer.score(_images())


def test_batch_must_be_four_dimensional(tiny: Scorer) -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        tiny.score(torch.zeros(3, 32, 32))


def test_model_name_without_loading_matches_the_model_id(tmp_path, tiny: Scorer, efficientnet: Scorer) -> None:
    from scoring.models import model_name

    path = tmp_path / "plant-camera.pt2"
    assert model_name(str(path)) == "plant-camera"
    assert model_name(f"{TINY}?head=classifier") == tiny.model_id.split("@")[0]
    assert model_name("efficientnet-lite0") == efficientnet.model_id.split("@")[0]
    assert model_name("torchvision:resnet50?weights=/w.pth") == "resnet50"


def test_a_factory_module_in_the_working_directory_never_shadows_an_installed_one(tmp_path, monkeypatch) -> None:
    import sys

    (tmp_path / "colorsys.py").write_text("raise SystemExit('colorsys.py in the working directory was imported')\n")
    (tmp_path / "plant_models.py").write_text(
        "import colorsys\n\nfrom tests.scoring.tiny_models import build\n\nREAL = colorsys.rgb_to_hsv\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.delitem(sys.modules, "plant_models", raising=False)
    path_before = list(sys.path)
    assert load_scorer("plant_models:build", device="cpu").model_id.startswith("build@")
    assert sys.modules["colorsys"].__file__ != str(tmp_path / "colorsys.py")
    assert sys.path == path_before  # searched for that import only
