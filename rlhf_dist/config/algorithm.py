"""The ``algorithm`` section: advantages, losses, the KL, and the off-policy and sampling fixes.

Kept apart from :mod:`rlhf_dist.config.schema` (which re-exports both classes) so each file fits
in a head.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_dist.config.section import Section


class KLConfig(Section):
    """The KL to the reference policy (rlhf_dist/algorithms/kl.py): estimator, where it enters, coefficient."""

    coef: float = Field(0.05, ge=0.0, description="KL coefficient; the starting value when adaptive")
    kind: Literal["k1", "k2", "k3"] = Field(
        "k1", description="estimator of KL(pi || pi_ref) per token (Schulman's k1, k2, k3); a loss takes k2 or k3"
    )
    mode: Literal["reward", "loss"] = Field("reward", description="penalise the reward, or add a loss term")
    adaptive: bool = Field(False, description="adapt coef towards target (Ziegler et al.); false = fixed coef")
    target: float | None = Field(None, gt=0.0, description="target KL (nats per sequence) when adaptive")
    horizon: int = Field(10000, ge=1, description="adaptive: sequences over which coef moves by up to 20%")


class AlgorithmConfig(Section):
    """Advantages (rlhf_dist/driver/shaping.py), losses (rlhf_dist/learner/rank.py), and the off-policy correction,
    dynamic sampling and overlong handling (rlhf_dist/algorithms/offpolicy.py)."""

    name: Literal["ppo", "grpo", "rloo", "reinforce_pp"] = Field(
        "grpo", description="ppo: GAE with a critic; grpo: group-normalised scores; rloo: leave-one-out baseline; "
        "reinforce_pp: REINFORCE++, batch-whitened returns"
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="ppo: discount of GAE")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="ppo: lambda of GAE")
    clip_low: float = Field(0.2, gt=0.0, lt=1.0, description="policy ratio clipped below at 1 - clip_low")
    clip_high: float = Field(0.2, gt=0.0, description="policy ratio clipped above at 1 + clip_high (> clip_low: DAPO's clip-higher)")
    value_clip: float = Field(0.2, gt=0.0, description="ppo: new values clipped to old values +- value_clip in the value loss")
    loss_agg: Literal["token-mean", "seq-mean-token-mean"] = Field(
        "token-mean", description="token-mean: over all response tokens of the batch; seq-mean-token-mean: per "
        "sequence, then over sequences"
    )
    normalize_group_std: bool = Field(True, description="grpo: divide each group's centred scores by its std")
    whiten_advantages: bool = Field(
        True, description="whiten ppo/rloo advantages over the batch (grpo normalises per group; reinforce_pp always whitens)"
    )
    kl: KLConfig = Field(KLConfig(), description="the KL to the reference policy")
    is_correction: Literal["auto", "none", "tis", "mis"] = Field(
        "auto", description="importance weights pi_learner / pi_rollout on the policy-gradient term (not the KL): "
        "tis truncates them at is_cap, mis drops tokens (or sequences) whose ratio is outside [1/is_cap, is_cap]; "
        "auto = tis when rollout.async_steps >= 1, else none"
    )
    is_cap: float = Field(2.0, gt=1.0, description="cap C of the importance weights: tis truncates at C, mis keeps [1/C, C]")
    is_level: Literal["token", "sequence"] = Field(
        "token", description="weigh each token by its own ratio, or each sequence by the geometric mean of its tokens' ratios"
    )
    dynamic_sampling: bool = Field(
        False, description="grpo/rloo: drop groups whose raw scores are all equal (no learning signal) and sample more "
        "prompts until the batch holds rollout.prompts_per_step informative groups (DAPO)"
    )
    max_sampling_rounds: int = Field(
        3, ge=1, description="dynamic_sampling: extra sampling rounds allowed after the first; when they are used up, "
        "the batch is filled with uninformative groups at zero advantage, so its shape never changes"
    )
    overlong: Literal["keep", "mask", "penalty"] = Field(
        "keep", description="long responses: keep them as they are; mask: leave the ones cut off at "
        "rollout.sampling.max_new_tokens out of the loss; penalty: add DAPO's soft length penalty to the score of "
        "every response longer than max_new_tokens - overlong_buffer"
    )
    overlong_buffer: int = Field(
        4, ge=0, description="penalty: the last tokens before max_new_tokens over which the penalty ramps from 0 to "
        "overlong_penalty"
    )
    overlong_penalty: float = Field(
        1.0, ge=0.0, description="penalty: subtracted from the score of a response of max_new_tokens tokens"
    )
