"""The frozen reference policy: log-probs of sampled tokens under the initial model."""

from __future__ import annotations

import torch

from rlhf_dist.config import RunConfig
from rlhf_dist.experience import Experience
from rlhf_dist.models.loading import load_causal_lm
from rlhf_dist.models.sequences import response_logprobs


class ReferenceModel:
    def __init__(self, model_path: str, cfg: RunConfig):
        torch.set_num_threads(1)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_causal_lm(model_path, cfg.model.dtype, cfg.model.trust_remote_code).to(self.device).eval()
        self.model.requires_grad_(False)
        self.temperature = cfg.rollout.sampling.temperature
        self.micro_batch_size = max(cfg.learner.micro_batch_size, 8)

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
