"""SCALE (Xu et al., ICLR 2024, https://arxiv.org/abs/2310.00227): the energy of the features scaled up by how much
of their mass lies outside their largest activations.

r = sum(h) / sum(h's top (1 - p) share): an out-of-distribution image drives a few units abnormally high (the
observation ReAct and ASH build on), so its top activations hold most of its mass and r is near 1, while an
in-distribution image's mass is spread wider and its r is larger; scaling the features by exp(r) before the head
stretches the in-distribution energy away from the rest. The head is linear, so
z' = W·(h·exp(r)) + b = exp(r)·(z - b) + b, from the same forward pass. Nothing is fitted.
"""

from __future__ import annotations

import torch

from scoring.scores import HeadOutputs, register

# The paper's percentile for ImageNet: the activations below it are the "pruned" mass in r.
SCALE_PERCENTILE = 0.85


@register("scale")
def scale(head: HeadOutputs) -> torch.Tensor:
    """Energy of the exp(r)-scaled features per image; larger means in-distribution."""
    features = head.features.clamp(min=0)  # r is defined on non-negative (post-activation) features
    kept = max(1, round(features.shape[1] * (1 - SCALE_PERCENTILE)))
    top = features.topk(kept, dim=1, sorted=False).values.sum(dim=1)  # unsorted: 9.5 against 14 µs an image
    ratio = features.sum(dim=1) / top.clamp(min=torch.finfo(features.dtype).tiny)
    bias = head.bias if head.bias is not None else torch.zeros(head.num_classes, dtype=head.logits.dtype)
    bias = bias.to(head.logits)
    scaled = torch.exp(ratio)[:, None] * (head.logits - bias) + bias
    return head.temperature * torch.logsumexp(scaled / head.temperature, dim=1)
