"""GradNorm (Huang, Geng & Li, NeurIPS 2021, https://arxiv.org/abs/2110.00218) in closed form.

The paper scores an image by the L1 norm of d/dW of sum_c -log softmax(z/T)_c, W the last layer's
weight (bias excluded). For z = W·h + b that gradient is the outer product (1/T)(C·p - 1)·hᵀ, and the
L1 norm of an outer product is the product of the L1 norms:

    GradNorm = (1/T) · ||C·p - 1||_1 · ||h||_1

so the whole batch is scored from one forward pass, with no backward pass and no per-image loop.
"""

from __future__ import annotations

import torch

from scoring.scores import HeadOutputs, register

# Below this spread of z/T around its mean, logsumexp(z/T) - log C loses the digits that C·p - 1
# is made of; log1p(mean(expm1(.))) keeps them. Above it both are exact and expm1 could overflow.
_NEAR_UNIFORM_SPREAD = 1.0


@register("output_l1", diagnostic=True)
def output_l1(head: HeadOutputs) -> torch.Tensor:
    """||C·softmax(z/T) - 1||_1 per image, accurate however close to uniform the softmax is."""
    # Shared with GradNorm, which reads it again: of the scores the slowest but SCALE (12 µs an image on a CPU).
    return head.shared("output_l1", lambda: _output_l1(head))


def _output_l1(head: HeadOutputs) -> torch.Tensor:
    centred = head.scaled_logits - head.scaled_logits.mean(dim=1, keepdim=True)
    near_uniform = centred.abs().amax(dim=1, keepdim=True) < _NEAR_UNIFORM_SPREAD
    # log(C·p_c) = centred_c - log(mean_c exp(centred_c)); only the near-uniform rows take the expm1
    # branch, so the clamp keeps the other rows' discarded branch finite.
    log_mean_exp = torch.where(
        near_uniform,
        torch.log1p(torch.expm1(centred.clamp(max=_NEAR_UNIFORM_SPREAD)).mean(dim=1, keepdim=True)),
        torch.logsumexp(centred, dim=1, keepdim=True) - head.log_num_classes,
    )
    return torch.expm1(centred - log_mean_exp).abs().sum(dim=1)


@register("feature_l1", diagnostic=True)
def feature_l1(head: HeadOutputs) -> torch.Tensor:
    """||h||_1 per image: the feature half of GradNorm."""
    return head.shared("feature_l1", lambda: head.features.abs().sum(dim=1))


@register("gradnorm")
def gradnorm(head: HeadOutputs) -> torch.Tensor:
    """GradNorm per image; larger means in-distribution."""
    return output_l1(head) * feature_l1(head) / head.temperature
