"""MaxLogit (Hendrycks et al., ICML 2022, https://arxiv.org/abs/1911.11132)."""

from __future__ import annotations

import torch

from scoring.scores import HeadOutputs, register


@register("maxlogit")
def maxlogit(head: HeadOutputs) -> torch.Tensor:
    """Largest logit; larger means in-distribution."""
    return head.logits.amax(dim=1)
