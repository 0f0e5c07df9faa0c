"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017, https://arxiv.org/abs/1610.02136)."""

from __future__ import annotations

import torch

from scoring.scores import HeadOutputs, register


@register("msp")
def msp(head: HeadOutputs) -> torch.Tensor:
    """Largest class probability at T = 1; larger means in-distribution."""
    return head.log_probs.amax(dim=1).exp()
