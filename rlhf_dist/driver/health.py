"""Collapse and no-signal alarms: a run that goes wrong says so on the console, on by default.

Three things make an RL run train on garbage while every number still looks finite:

- **KL blow-up**: the policy leaves the reference far behind (``kl/token_mean`` past
  ``monitor.kl_token_budget``), or jumps away in one step (more than ``monitor.kl_jump`` times the
  last step's KL per token). A learning rate that is too large shows here first.
- **Entropy collapse**: ``policy/entropy`` falls below ``monitor.entropy_floor`` of its first
  value; the policy samples one answer and stops exploring.
- **No learning signal**: for ``monitor.no_signal_steps`` steps in a row, every group (every
  batch, with one sample per prompt) got one reward for all its samples, so group-relative
  advantages are all zero (a constant or broken reward, a too easy or too hard task).

Each alarm is a metric (``monitor/kl_alarm``, ``monitor/entropy_alarm``, ``monitor/no_signal_alarm``,
1.0 at a step where it fires) and a warning line; none stops the run by itself. The driver checks
after the learner's update and before the weight sync, so a diverging policy is named before a
sync check can fail on it (`HealthMonitor.diverged`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_dist.algorithms import uniform_groups
from rlhf_dist.config.schema import MonitorConfig

KL_JUMP_FLOOR = 0.1  # a jump counts only to above this share of kl_token_budget
KL_JUMP_START = 0.01  # ... and from at least this share of it (KL starts at ~0, so any first move is a "jump")


class TrainingHealthWarning(UserWarning):
    """A collapse or no-signal alarm."""


@dataclass
class HealthMonitor:
    cfg: MonitorConfig
    group_size: int
    first_entropy: float | None = None
    last_kl: float | None = None
    zero_spread_steps: int = 0  # steps in a row without any reward spread
    diverged: str = ""  # the last KL or entropy alarm's reason, for a later failure to name

    def check(self, step: int, kl_token: float, entropy: float | None, scores: torch.Tensor) -> tuple[dict[str, float], list[str]]:
        """This step's alarm metrics and warning lines, from the batch's KL per token, the policy
        entropy the learner measured, and the raw rewards ``scores`` (B,) in groups."""
        lines, metrics = [], {}
        kl_reason = self._kl(kl_token)
        metrics["monitor/kl_alarm"] = float(bool(kl_reason))
        if kl_reason:
            lines.append(f"KL alarm at step {step}: {kl_reason}")
        entropy_reason = self._entropy(entropy)
        metrics["monitor/entropy_alarm"] = float(bool(entropy_reason))
        if entropy_reason:
            lines.append(f"entropy alarm at step {step}: {entropy_reason}")
        self.diverged = kl_reason or entropy_reason or ""
        zero_frac, constant = self._spread(scores)
        metrics["reward/zero_spread_frac"] = zero_frac
        need = self.cfg.no_signal_steps
        metrics["monitor/no_signal_alarm"] = float(bool(need) and self.zero_spread_steps >= need)
        if metrics["monitor/no_signal_alarm"]:
            same = f" ({constant:g})" if constant is not None else ""
            lines.append(
                f"no learning signal: every sample of every prompt got the same reward{same} for "
                f"{self.zero_spread_steps} steps (steps {step - self.zero_spread_steps + 1}..{step}); advantages are "
                "zero, so nothing is learned. Check the reward function, or the task's difficulty"
            )
        return metrics, lines

    def _kl(self, kl_token: float) -> str:
        budget, jump, last = self.cfg.kl_token_budget, self.cfg.kl_jump, self.last_kl
        self.last_kl = kl_token
        if kl_token != kl_token or kl_token in (float("inf"), float("-inf")):
            return "KL to the reference is not finite: the policy diverged; lower learner.optimizer.lr"
        if budget is not None and kl_token > budget:
            return (f"KL to the reference is {kl_token:.3g} nats/token, above monitor.kl_token_budget={budget:g}: "
                    "the policy is drifting fast; lower learner.optimizer.lr or raise algorithm.kl.coef")
        floor, start = (KL_JUMP_FLOOR * budget, KL_JUMP_START * budget) if budget is not None else (0.0, 1e-3)
        if jump is not None and last is not None and last >= start and kl_token > floor and kl_token > jump * last:
            return (f"KL to the reference jumped from {last:.3g} to {kl_token:.3g} nats/token in one step "
                    f"(more than monitor.kl_jump={jump:g}x): lower learner.optimizer.lr")
        return ""

    def _entropy(self, entropy: float | None) -> str:
        if entropy is None or self.cfg.entropy_floor is None:
            return ""
        if entropy != entropy:
            return "the policy entropy is not finite: the policy diverged; lower learner.optimizer.lr"
        if self.first_entropy is None:
            self.first_entropy = entropy
            return ""
        if entropy < self.cfg.entropy_floor * self.first_entropy:
            return (f"policy entropy fell to {entropy:.3g} nats/token, below monitor.entropy_floor="
                    f"{self.cfg.entropy_floor:g} of its first value {self.first_entropy:.3g}: the policy collapsed "
                    "to a few answers; lower learner.optimizer.lr, or raise sampling temperature")
        return ""

    def _spread(self, scores: torch.Tensor) -> tuple[float, float | None]:
        """Share of groups without reward spread; counts the steps in a row where it is all of them.
        With one sample per prompt, the batch is the group."""
        scores = scores.detach().float().flatten()
        size = self.group_size if self.group_size > 1 and scores.numel() % self.group_size == 0 else scores.numel()
        flat = uniform_groups(scores, max(size, 1)) if scores.numel() else torch.ones(1, dtype=torch.bool)
        frac = float(flat.float().mean())
        all_flat = bool(flat.all()) and scores.numel() > 0
        self.zero_spread_steps = self.zero_spread_steps + 1 if all_flat else 0
        constant = float(scores[0]) if all_flat and bool((scores == scores[0]).all()) else None
        return frac, constant

    def state_dict(self) -> dict[str, float | int | None]:
        return {"first_entropy": self.first_entropy, "last_kl": self.last_kl, "zero_spread_steps": self.zero_spread_steps}

    def load_state_dict(self, state: dict) -> None:
        self.first_entropy = state.get("first_entropy")
        self.last_kl = state.get("last_kl")
        self.zero_spread_steps = int(state.get("zero_spread_steps", 0))
