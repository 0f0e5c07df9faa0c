"""SCALE and ViM against their definitions computed the long way, and the projection the features leave in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from scoring.features import FeatureProjection, fit_projection
from scoring.scores import HeadOutputs, registered_scores
from scoring.scores.scale import SCALE_PERCENTILE
from scoring.scores.vim import fit_vim

SCORES = registered_scores()


def _head(features: torch.Tensor, layer: nn.Linear) -> HeadOutputs:
    with torch.no_grad():
        logits = layer(features.float()).double()
    return HeadOutputs(features.double(), logits, 1.0, layer.weight.detach().double(), layer.bias.detach().double())


def test_scale_is_the_energy_of_the_rescaled_features_through_the_head() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(40, 7)
    features = torch.rand(5, 40) * 3
    head = _head(features, layer)
    kept = round(40 * (1 - SCALE_PERCENTILE))
    ratio = features.sum(1) / features.topk(kept, dim=1).values.sum(1)
    with torch.no_grad():
        rescaled = layer((features * torch.exp(ratio)[:, None]).double().float())
    expected = torch.logsumexp(rescaled.double(), dim=1)
    assert torch.allclose(SCORES["scale"](head, {}), expected, rtol=1e-4)


def test_scale_ranks_spread_activations_above_a_few_abnormally_high_ones() -> None:
    layer = nn.Linear(20, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.ones(3, 20) * torch.tensor([[1.0], [0.5], [0.1]]))
        layer.bias.zero_()
    concentrated = torch.zeros(1, 20)
    concentrated[0, :3] = 1.0
    spread = torch.full((1, 20), 3 / 20)  # the same total activation, over every unit
    scores = SCORES["scale"](_head(torch.cat([concentrated, spread]), layer), {})
    assert scores[1] > scores[0]  # r = 1 for the concentrated image, 20/3 for the spread one


def test_vim_measures_the_part_of_the_features_outside_the_reference_subspace() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(80, 10)
    basis = torch.linalg.qr(torch.randn(80, 80))[0]
    inside = torch.randn(300, 4) @ basis[:, :4].T * 5  # the reference lives in 4 of 80 dimensions
    state = fit_vim(_head(inside, layer))
    assert len(state["axes"]) == 32
    assert len(state["origin"]) == 80
    healthy = torch.randn(20, 4) @ basis[:, :4].T * 5
    off_subspace = healthy + torch.randn(20, 76) @ basis[:, 4:].T * 2
    scores = {name: SCORES["vim"](_head(features, layer), {"vim": state}) for name, features in
              (("healthy", healthy), ("off", off_subspace))}  # fmt: skip
    assert (scores["off"] < scores["healthy"].min()).all()
    # The residual norm, computed with the explicit null-space basis as ViM's reference code does.
    origin, axes = (torch.tensor(state[key], dtype=torch.float64) for key in ("origin", "axes"))
    centred = off_subspace.double() - origin
    complement = torch.linalg.svd(axes, full_matrices=True)[2][len(axes) :]
    residual = (centred @ complement.T).norm(dim=1)
    head = _head(off_subspace, layer)
    expected = torch.logsumexp(head.logits, dim=1) - state["alpha"] * residual
    assert torch.allclose(SCORES["vim"](head, {"vim": state}), expected, rtol=1e-6, atol=1e-6)


def test_vim_refuses_a_head_without_weights_and_keeps_a_residual_on_a_small_head() -> None:
    torch.manual_seed(2)
    layer = nn.Linear(8, 3)
    head = _head(torch.rand(50, 8), layer)
    assert len(fit_vim(head)["axes"]) == 4  # half the dimensions: the other half is the residual
    with pytest.raises(ValueError, match="head's weight"):
        fit_vim(HeadOutputs(head.features, head.logits, 1.0))
    with pytest.raises(ValueError, match="calibrate on more healthy images"):
        fit_vim(_head(torch.rand(3, 8), layer))


def test_the_projection_keeps_the_reference_directions_and_ignores_the_norm() -> None:
    rng = np.random.default_rng(3)
    features = torch.from_numpy(np.abs(rng.normal(size=(200, 60))))
    state = fit_projection(features, dimensions=10)
    projection = FeatureProjection.from_state(state)
    assert projection(features).shape == (200, 10)
    assert torch.allclose(projection(features * 7.5), projection(features))  # the norm is GradNorm's to see
    assert torch.allclose(projection(features).mean(dim=0), torch.zeros(10, dtype=torch.float64), atol=1e-12)
    assert len(fit_projection(features[:5])["axes"]) == 4  # no more axes than the images can span
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_projection(features[:1])


def test_vim_keeps_only_the_latest_states_as_tensors() -> None:
    # Regression: every state ever scored with stayed cached, so a monitor loading thresholds per window grew.
    from scoring.scores import vim as vim_module

    torch.manual_seed(4)
    layer = nn.Linear(8, 3)
    head = _head(torch.rand(40, 8), layer)
    states = [fit_vim(head) for _ in range(10)]
    for state in states:
        SCORES["vim"](head, {"vim": state})
    assert len(vim_module._AS_TENSORS) == vim_module._CACHED_STATES
    again = SCORES["vim"](head, {"vim": states[0]})  # evicted, converted again: the same scores
    assert torch.allclose(again, SCORES["vim"](head, {"vim": states[-1]}))
