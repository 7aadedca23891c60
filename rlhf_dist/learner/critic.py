"""The PPO critic: a transformer backbone with a scalar value head on every position."""

from __future__ import annotations

import torch
from torch import nn

from rlhf_dist.models.loading import refuse_random_weights


class CriticModel(nn.Module):
    def __init__(self, backbone: nn.Module, value_head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.value_head = value_head

    @classmethod
    def build(cls, path: str, from_reward_model: bool = False) -> CriticModel:
        """From a causal LM (head zero-initialised) or a scalar reward model (head copied from it)."""
        from transformers import AutoModel, AutoModelForSequenceClassification

        if from_reward_model:
            reward, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32, output_loading_info=True
            )
            refuse_random_weights(info, path, "a reward model to start the critic from (learner.critic_init)")
            head = nn.Linear(reward.config.hidden_size, 1, bias=False)
            head.weight.data.copy_(reward.score.weight.data)
            return cls(reward.model, head)
        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
        nn.init.zeros_(head.weight)
        return cls(backbone, head)

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """(B, T) values: for response token t, V of the state before it (position P + t - 1)."""
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        prompt_len, resp_len = prompt_ids.shape[1], response_ids.shape[1]
        hidden = hidden[:, prompt_len - 1 : prompt_len - 1 + resp_len]
        return self.value_head(hidden).squeeze(-1)
