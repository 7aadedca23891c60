"""KL estimators between the policy and the reference, and the KL-coefficient controllers.

The estimators follow J. Schulman, "Approximating KL Divergence" (2020): with samples drawn from
the policy and ``r = ref_logp - logp`` per token,

- k1 = -r = logp - ref_logp          unbiased, can be negative, high variance
- k2 = r**2 / 2                      biased, always >= 0, low variance
- k3 = exp(r) - r - 1                unbiased, always >= 0, low variance
"""

from __future__ import annotations

from typing import Literal

import torch

from rlhf_dist.algorithms.masking import masked_fill_zero

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")


def kl_estimate(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    kind: KLKind,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference), in nats.

    Args:
        logp: (B, T) log pi(a_t | s_t) of the sampled tokens under the policy.
        ref_logp: (B, T) log pi_ref(a_t | s_t) of the same tokens.
        kind: "k1", "k2" or "k3" (see the module docstring).
        mask: optional (B, T) 0/1; entries outside it are returned as 0.
    Returns:
        (B, T) per-token estimates.
    """
    log_ratio = ref_logp - logp
    if mask is not None:
        log_ratio = masked_fill_zero(log_ratio, mask)
    if kind == "k1":
        kl = -log_ratio
    elif kind == "k2":
        kl = 0.5 * log_ratio**2
    elif kind == "k3":
        # expm1 keeps precision for small ratios; the clamp removes the last-ulp negatives of a
        # quantity that is >= 0 in exact arithmetic.
        kl = (torch.expm1(log_ratio) - log_ratio).clamp_min(0.0)
    else:
        raise ValueError(f"unknown KL estimator kind {kind!r}; expected one of {KL_KINDS}")
    return kl if mask is None else masked_fill_zero(kl, mask)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; present so both controllers share one interface."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of the KL coefficient toward a target KL (Ziegler et al. 2019, §2.2).

    ``e = clamp(current_kl / target - 1, -0.2, 0.2)`` and ``coef <- coef * (1 + e * n_steps / horizon)``.

    Units: ``current_kl`` is the batch mean of each sequence's summed KL (nats per sequence), and
    ``n_steps`` is the number of sequences in the batch, as in Ziegler et al. and TRL.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
