"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay to a floor.

Pure maths, no DeepSpeed: :class:`LRSchedule` maps an optimizer-step count to a multiplier of the
base LR, and :func:`lr_scheduler` wraps it in a torch ``LambdaLR`` that the learners hand to
``deepspeed.initialize``, so DeepSpeed steps it after each applied optimizer step and keeps its
state in the checkpoint. The horizon (the run's total optimizer steps) is computed here once, from
the config, for RL (:func:`rl_optimizer_steps`) and the supervised stages (:func:`stage_optimizer_steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("constant", "linear", "cosine")


@dataclass
class LRSchedule:
    """The LR multiplier after ``step`` optimizer steps (the factor applied to step ``step``'s update).

    - Warmup (``step < warmup_steps``): ``step / warmup_steps``, linear from 0, as in transformers'
      ``get_*_schedule_with_warmup``; so the first optimizer step of a warmed-up run has LR 0.
    - Then ``constant``: 1. ``linear`` / ``cosine``: from 1 down to ``min_lr_ratio`` at
      ``step == total_steps``, and ``min_lr_ratio`` after it (a horizon that ends early never
      goes below the floor).

    A callable object rather than a lambda: torch's ``LambdaLR.state_dict`` then stores these
    fields (plain numbers and a string), which the safe checkpoint engine can write and restore.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"scheduler must be one of {KINDS}, got {self.kind!r}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ValueError(f"warmup_steps and total_steps must be >= 0, got {self.warmup_steps}, {self.total_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.kind == "linear":
            remaining = 1.0 - progress
        else:
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * remaining


def schedule_from_config(optimizer_cfg, total_steps: int) -> LRSchedule:
    """``optimizer_cfg`` is an OptimizerConfig section (scheduler, warmup_steps, min_lr_ratio)."""
    return LRSchedule(
        kind=optimizer_cfg.scheduler,
        warmup_steps=optimizer_cfg.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=optimizer_cfg.min_lr_ratio,
    )


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over every parameter group of ``optimizer``, following ``schedule``.

    The scheduler holds ``schedule`` itself (give each engine its own), and restores its fields
    from a checkpoint when its state is loaded.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def rl_optimizer_steps(cfg) -> int:
    """Optimizer steps of a whole RL run (``cfg`` is a RunConfig): the LR decay horizon.

    Each step trains ``learner.epochs`` passes over the rollout batch (prompts_per_step x
    samples_per_prompt sequences) in mini-batches of ``learner.mini_batch_size`` sequences, one
    optimizer step each (a last partial mini-batch still takes a step).
    """
    batch = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    per_epoch = math.ceil(batch / cfg.learner.mini_batch_size)
    return cfg.steps * cfg.learner.epochs * per_epoch


def stage_optimizer_steps(examples_per_rank: int, per_rank_mini_batch: int, epochs: int) -> int:
    """Optimizer steps of a supervised stage: ``epochs`` x the whole mini-batches in one rank's
    share of the training set (a partial last mini-batch is dropped, so all ranks step alike)."""
    return epochs * (examples_per_rank // per_rank_mini_batch)
