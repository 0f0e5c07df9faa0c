"""GradNorm the way the paper's official code computes it: one image at a time, with a backward pass.

This is the exactness reference in tests and the baseline in ``bench/scoring.py``; production scoring
uses the closed form in :mod:`scoring.scores.gradnorm`. Mirrors ``iterate_data_gradnorm`` of
https://github.com/deeplearning-wisc/gradnorm_ood (batch size 1, all-ones targets, mean over the batch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def gradnorm_by_backward(
    model: nn.Module, head: nn.Module, images: torch.Tensor, temperature: float = 1.0
) -> np.ndarray:
    """GradNorm of each image by autograd.

    Args:
        model: the network; its parameters' gradients are overwritten.
        head: the final linear layer whose weight gradient is measured (bias excluded, as in the paper).
        images: (N, 3, H, W) preprocessed images on the model's device.
        temperature: T in softmax(z/T).

    Returns:
        (N,) float64 array.
    """
    scores = []
    for image in images:
        model.zero_grad(set_to_none=True)
        logits = model(image.unsqueeze(0)) / temperature
        targets = torch.ones_like(logits)
        loss = torch.mean(torch.sum(-targets * torch.log_softmax(logits, dim=-1), dim=-1))
        loss.backward()
        scores.append(head.weight.grad.abs().sum().item())
    model.zero_grad(set_to_none=True)
    return np.asarray(scores, dtype=np.float64)
