"""Energy score (Liu et al., NeurIPS 2020, https://arxiv.org/abs/2010.03759): -E(x) = T·logsumexp(z/T)."""

from __future__ import annotations

import torch

from scoring.scores import HeadOutputs, register


@register("energy")
def energy(head: HeadOutputs) -> torch.Tensor:
    """Negative free energy per image; larger means in-distribution."""
    return head.temperature * torch.logsumexp(head.scaled_logits, dim=1)
