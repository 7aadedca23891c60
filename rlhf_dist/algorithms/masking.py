"""Masked reductions over token tensors.

Token tensors are ``(B, T)`` with a 0/1 float ``mask`` marking response tokens (right padding).
Entries where the mask is 0 may hold anything, NaN and inf included, so every function here selects
with ``torch.where`` instead of multiplying by the mask (``NaN * 0`` is NaN).
"""

from __future__ import annotations

import torch

# Denominator floor: a mask with no tokens gives a mean of 0 (its numerator is 0), not NaN.
_EMPTY_FLOOR = 1e-8


def masked_fill_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is set, 0 elsewhere; NaN-safe."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the masked entries (all of them, or along ``dim``)."""
    kept = masked_fill_zero(x, mask)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the masked entries.

    Args:
        x: any shape, e.g. (B, T).
        mask: 0/1, same shape as ``x``.
        dim: reduce over this dim only; ``None`` reduces over everything.
    Returns:
        a 0-d tensor, or ``x`` reduced along ``dim``. Rows without a masked entry give 0.
    """
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.to(x.dtype).clamp_min(_EMPTY_FLOOR)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Biased (population) variance of ``x`` over the masked entries; a 0-d tensor."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries of ``x`` to zero mean and unit variance.

    ``(x - mean) * rsqrt(var + 1e-8)`` with the masked mean and the masked biased variance; with
    ``shift_mean=False`` the mean is added back, so only the scale changes. Entries outside the
    mask are returned as 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return masked_fill_zero(whitened, mask)
