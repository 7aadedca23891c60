"""Calibrating a pairwise reward model: temperature scaling and expected calibration error.

A Bradley-Terry reward model says "a is preferred to b" with probability sigmoid((r_a - r_b) / T).
Temperature scaling (Guo et al. 2017) fits the single scalar T on held-out pairs; ECE measures
the gap between the stated confidence and the observed accuracy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def preference_nll(margins: torch.Tensor, temperature: float) -> float:
    """Mean -log sigmoid(margin / T); margins are r_chosen - r_rejected, (N,)."""
    return float(-F.logsigmoid(margins / temperature).mean())


def fit_temperature(margins: torch.Tensor, low: float = 0.02, high: float = 50.0) -> float:
    """The T > 0 minimising :func:`preference_nll`: a log-spaced grid, then golden-section search."""
    grid = torch.logspace(math.log10(low), math.log10(high), 81)
    losses = [preference_nll(margins, float(t)) for t in grid]
    best = min(range(len(grid)), key=losses.__getitem__)
    a = math.log(float(grid[max(best - 1, 0)]))
    b = math.log(float(grid[min(best + 1, len(grid) - 1)]))
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if preference_nll(margins, math.exp(c)) < preference_nll(margins, math.exp(d)):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


def expected_calibration_error(margins: torch.Tensor, temperature: float = 1.0, bins: int = 10) -> float:
    """ECE of the model's pairwise predictions: it predicts the side it scores higher, with
    confidence max(p, 1 - p) where p = sigmoid(margin / T); correct when that side is the chosen one.
    """
    p = torch.sigmoid(margins.float() / temperature)
    confidence = torch.maximum(p, 1 - p)
    correct = (p > 0.5).float()
    edges = torch.linspace(0.5, 1.0, bins + 1)
    ece = 0.0
    for i in range(bins):
        upper = confidence <= edges[i + 1] if i == bins - 1 else confidence < edges[i + 1]
        in_bin = (confidence >= edges[i]) & upper
        if in_bin.any():
            ece += float(in_bin.float().mean()) * abs(float(correct[in_bin].mean() - confidence[in_bin].mean()))
    return ece
