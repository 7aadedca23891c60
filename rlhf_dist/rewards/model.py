"""Reward models: a sequence-classification model scores each (prompt, response)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_dist.errors import UserError
from rlhf_dist.models.loading import load_tokenizer, refuse_random_weights
from rlhf_dist.models.sequences import reward_input_ids, right_pad, sequence_scores


class RewardModel:
    """A Hugging Face sequence-classification model (num_labels=1) scoring ``prompt + response``.

    Texts are right-padded (the model pools the last non-pad token) and right-truncated to the
    model's maximum positions; scoring runs in batches of ``batch_size`` under ``no_grad``.
    """

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification


        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "right"
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, output_loading_info=True
            )
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load a reward model from {path!r}: {exc}. Point the component's path at a "
                "directory holding a sequence-classification model with num_labels=1"
            ) from None
        refuse_random_weights(info, path, "a reward model (sequence classifier, num_labels=1)")
        if model.config.pad_token_id is None:  # the model finds the last token by pad id
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        norm_file = Path(path) / "reward_normalization.json"
        self.normalization = json.loads(norm_file.read_text()) if norm_file.exists() else None
        self.max_length = getattr(model.config, "max_position_embeddings", None) or min(
            self.tokenizer.model_max_length, 1 << 20
        )

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Scores (B,) float32 on CPU for each (prompt, response), read as in RM training.

        When the model directory holds ``reward_normalization.json`` (written by `rlhf-dist rm`),
        scores are normalised with its mean and std, so that PPO sees rewards of unit scale.
        """
        rows = [reward_input_ids(self.tokenizer, p, r)[: self.max_length] for p, r in zip(prompts, responses, strict=True)]
        scores = []
        for start in range(0, len(rows), self.batch_size):
            ids, mask = right_pad(rows[start : start + self.batch_size], self.tokenizer.pad_token_id)
            scores.append(sequence_scores(self.model, ids.to(self.device), mask.to(self.device)).cpu())
        out = torch.cat(scores) if scores else torch.zeros(0)
        if self.normalization is not None:
            out = (out - self.normalization["mean"]) / self.normalization["std"]
        return out
