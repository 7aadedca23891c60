"""The frozen reference policy: log-probs of sampled tokens under the initial model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_dist.config import RunConfig
from rlhf_dist.experience import Experience
from rlhf_dist.models.loading import load_causal_lm
from rlhf_dist.models.sequences import response_logprobs

# Sequences per reference forward pass at least: no backward pass here, so a learner's small
# micro-batch (sized for activations and gradients) would only add passes.
MIN_MICRO_BATCH = 8


@dataclass(frozen=True)
class ReferenceSpec:
    """What the reference model reads; Ray pickles it to each `ReferenceActor` instead of the whole
    `RunConfig`, and `from_config` is the one place that reads the config for this role."""

    model_path: str  # the frozen weights: reference.path, else the policy's starting weights
    dtype: str  # weights' dtype: float32 | bfloat16 | float16 (model.dtype)
    trust_remote_code: bool  # let transformers run code shipped with the model
    temperature: float  # the rollout's sampling temperature: log pi_ref of the same scaled distribution
    micro_batch_size: int  # sequences per forward pass: the learner's, at least MIN_MICRO_BATCH

    @classmethod
    def from_config(cls, cfg: RunConfig, policy_path: str) -> ReferenceSpec:
        """``policy_path`` is the resolved policy directory the run starts from (a built tiny model,
        a hub name); it is the reference too unless ``reference.path`` names other weights."""
        return cls(
            model_path=cfg.reference.path or policy_path,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
            temperature=cfg.rollout.sampling.temperature,
            micro_batch_size=max(cfg.learner.micro_batch_size, MIN_MICRO_BATCH),
        )


class ReferenceModel:
    def __init__(self, spec: ReferenceSpec):
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_causal_lm(spec.model_path, spec.dtype, spec.trust_remote_code).to(self.device).eval()
        self.model.requires_grad_(False)
        self.temperature = spec.temperature
        self.micro_batch_size = spec.micro_batch_size

    @torch.no_grad()
    def logprobs(self, exp: Experience) -> torch.Tensor:
        """(B, T) log pi_ref of the sampled tokens, temperature-scaled like the policy's."""
        out = []
        for start in range(0, exp.batch_size, self.micro_batch_size):
            mb = exp.select(slice(start, start + self.micro_batch_size))
            logp, _ = response_logprobs(
                self.model,
                mb.prompt_ids.to(self.device),
                mb.prompt_mask.to(self.device),
                mb.response_ids.to(self.device),
                mb.response_mask.to(self.device),
                temperature=self.temperature,
            )
            out.append(logp.cpu())
        return torch.cat(out)
