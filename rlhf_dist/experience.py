"""`Experience`: the one record that flows through a training step.

A step's batch holds B sequences. Each is a left-padded prompt followed by a right-padded
response, so ``torch.cat([prompt_ids, response_ids], dim=1)`` is the model input and the logits
for response token t sit at position ``P + t - 1``. Fields are filled in phase by phase
(generate -> score -> reference -> values -> advantages); a field not computed yet is ``None``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from rlhf_dist.models.sequences import pad_to_width

# Field groups by shape; `split`, `concat` and validation walk these lists.
_PROMPT_FIELDS = ("prompt_ids", "prompt_mask")
_TOKEN_FIELDS = (
    "response_ids",
    "response_mask",
    "model_mask",
    "rollout_logprobs",
    "old_logprobs",
    "ref_logprobs",
    "values",
    "token_rewards",
    "advantages",
    "returns",
    "turn_rewards",
)
_SEQUENCE_FIELDS = ("scores", "prompt_index", "policy_versions", "trainable", "truncated")


class ExperienceShapeError(ValueError):
    """An `Experience` whose tensors disagree on shape, or a bad split/concat request."""


@dataclass
class Experience:
    """A batch of sampled sequences and everything computed about them.

    B is the batch, P the (padded) prompt length and T the (padded) response length.
    """

    # Tokens
    prompt_ids: torch.Tensor  # (B, P) long, left padded with the pad token
    prompt_mask: torch.Tensor  # (B, P) 0/1, 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) long, right padded
    response_mask: torch.Tensor  # (B, T) 0/1 float, 1 on response tokens
    # Log-probabilities of the sampled tokens (temperature-scaled distribution)
    rollout_logprobs: torch.Tensor  # (B, T) log pi_behaviour(a|s), from the rollout engine
    # (B, T) 0/1 float, multi-turn: 1 on the tokens the model sampled (env, tool and template tokens
    # are held and attended, never trained on); None: every response token is the model's
    model_mask: torch.Tensor | None = None
    # (B, T) log pi_proximal(a|s): the learner's own log-probs before its update, when the driver
    # computes them ahead of training (async); otherwise the learner computes them in `train`
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None  # (B, T) log pi_ref(a|s), from the reference
    # Critic and rewards
    values: torch.Tensor | None = None  # (B, T) V(s_t) at rollout time (PPO only)
    scores: torch.Tensor | None = None  # (B,) scalar reward of each sequence
    token_rewards: torch.Tensor | None = None  # (B, T) score at the last token plus KL penalties
    turn_rewards: torch.Tensor | None = None  # (B, T) multi-turn: each env turn reward at that turn's last model token
    # Training targets
    advantages: torch.Tensor | None = None  # (B, T)
    returns: torch.Tensor | None = None  # (B, T) value targets (PPO only)
    # Bookkeeping
    prompt_index: torch.Tensor | None = None  # (B,) long, the dataset index of each prompt
    policy_versions: torch.Tensor | None = None  # (B,) long, the policy version that sampled each sequence
    trainable: torch.Tensor | None = None  # (B,) 0/1 float, 0 = no loss on this sequence (overlong: mask)
    truncated: torch.Tensor | None = None  # (B,) bool, the response was cut off at max_new_tokens
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,)

    def __post_init__(self) -> None:
        self.validate()

    # -- shape ----------------------------------------------------------------------------------

    @property
    def action_mask(self) -> torch.Tensor:
        """(B, T) the tokens the policy sampled: ``model_mask`` in a multi-turn batch, else every
        response token. KL, advantages, importance weights and the mismatch read these only."""
        return self.response_mask if self.model_mask is None else self.model_mask

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, T) the tokens that enter the losses: the sampled ones, without the sequences marked
        untrainable."""
        if self.trainable is None:
            return self.action_mask
        return self.action_mask * self.trainable[:, None].to(self.response_mask.dtype)

    @property
    def batch_size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def num_sampled_tokens(self) -> int:
        """Tokens the policy sampled (a multi-turn batch's env, tool and template tokens left out)."""
        return int(self.action_mask.sum().item())

    def validate(self) -> None:
        """Check that every tensor agrees with the (B, P) prompt and (B, T) response shapes."""
        if self.prompt_ids.dim() != 2 or self.response_ids.dim() != 2:
            raise ExperienceShapeError(
                f"prompt_ids and response_ids must be 2-D (B, P) and (B, T); got "
                f"{tuple(self.prompt_ids.shape)} and {tuple(self.response_ids.shape)}"
            )
        batch, resp_len = self.response_ids.shape
        expected = {name: (batch, self.prompt_ids.shape[1]) for name in _PROMPT_FIELDS}
        expected.update({name: (batch, resp_len) for name in _TOKEN_FIELDS})
        expected.update({name: (batch,) for name in _SEQUENCE_FIELDS})
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ExperienceShapeError(
                    f"Experience.{name} has shape {tuple(value.shape)}, expected {shape} "
                    f"(B={batch} sequences, T={resp_len} response tokens)"
                )
        for name, value in self.reward_components.items():
            if tuple(value.shape) != (batch,):
                raise ExperienceShapeError(
                    f"reward component {name!r} has shape {tuple(value.shape)}, expected ({batch},)"
                )

    # -- split / concat -------------------------------------------------------------------------

    def _tensor_fields(self) -> list[str]:
        return [*_PROMPT_FIELDS, *_TOKEN_FIELDS, *_SEQUENCE_FIELDS]

    def select(self, index: torch.Tensor | slice) -> Experience:
        """The sub-batch of rows ``index`` (a slice or a 1-D index tensor)."""
        updates = {
            name: getattr(self, name)[index]
            for name in self._tensor_fields()
            if getattr(self, name) is not None
        }
        updates["reward_components"] = {k: v[index] for k, v in self.reward_components.items()}
        return dataclasses.replace(self, **updates)

    def shards(self, sizes: list[int]) -> list[Experience]:
        """Contiguous shards of the given sizes (summing to the batch), e.g. uneven per worker."""
        if sum(sizes) != self.batch_size or min(sizes, default=0) < 0:
            raise ExperienceShapeError(f"shard sizes {sizes} do not add up to the batch of {self.batch_size}")
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [self.select(slice(a, a + n)) for a, n in zip(starts, sizes)]

    def split(self, n: int) -> list[Experience]:
        """Split into ``n`` contiguous shards of equal size, e.g. one per learner rank."""
        if n < 1 or self.batch_size % n:
            raise ExperienceShapeError(
                f"cannot split a batch of {self.batch_size} sequences into {n} equal shards; "
                f"choose sizes so that the batch is a multiple of {n}"
            )
        size = self.batch_size // n
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(n)]

    @classmethod
    def concat(cls, parts: list[Experience]) -> Experience:
        """Join batches row-wise, re-padding prompts on the left and responses on the right.

        All parts must carry the same optional fields; their policy versions may differ (each
        sequence keeps its own in ``policy_versions``).
        """
        if not parts:
            raise ExperienceShapeError("Experience.concat needs at least one part")
        first = parts[0]
        prompt_len = max(p.prompt_ids.shape[1] for p in parts)
        resp_len = max(p.response_ids.shape[1] for p in parts)
        joined: dict[str, torch.Tensor | None] = {}
        for name in first._tensor_fields():
            present = [getattr(p, name) is not None for p in parts]
            if any(present) and not all(present):
                raise ExperienceShapeError(
                    f"cannot concat: Experience.{name} is set in some parts and None in others"
                )
            if not all(present):
                joined[name] = None
                continue
            tensors = [getattr(p, name) for p in parts]
            if name in _PROMPT_FIELDS:
                tensors = [pad_to_width(t, prompt_len, left=True) for t in tensors]
            elif name in _TOKEN_FIELDS:
                tensors = [pad_to_width(t, resp_len, left=False) for t in tensors]
            joined[name] = torch.cat(tensors, dim=0)
        names = set(first.reward_components)
        if any(set(p.reward_components) != names for p in parts):
            raise ExperienceShapeError("cannot concat: parts have different reward components")
        components = {k: torch.cat([p.reward_components[k] for p in parts]) for k in names}
        return cls(**joined, reward_components=components)


@dataclass
class StepBatch:
    """One step's batch as the driver holds it: the tensors that travel to the actors, plus the
    texts and the dataset row columns that only the reward scorer, the logs and eval read."""

    exp: Experience
    prompts: list[str]  # (B,) the rendered prompt text of each sequence
    responses: list[str]  # (B,) the decoded response text
    columns: dict[str, list] = field(default_factory=dict)  # row column name -> (B,) values
    turns: list[dict] = field(default_factory=list)  # multi-turn: each row's samples.jsonl fields ([] single-turn)


def columns_of(rows: list) -> dict[str, list]:
    """Row columns (each row's ``columns`` dict) as column name -> values in row order; a column
    missing from some rows gets None there."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.columns))
    return {name: [row.columns.get(name) for row in rows] for name in names}
