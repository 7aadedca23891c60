"""Micro-batches: which sequences of a batch share a forward pass, and how their statistics add up.

Fixed micro-batches take ``learner.micro_batch_size`` consecutive sequences. Token-budget
micro-batches (``learner.max_tokens_per_micro_batch``) group sequences of similar length so that a
forward pass holds at most the budget in positions, counted after the group's padding is trimmed:
rows x (longest prompt + longest response of the group). Prompts are left padded and responses
right padded, so a sequence's *length* here is a pair ``(prompt span, response span)``.

Everything here is plain Python on lists and masks, so it is tested without DeepSpeed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlhf_dist.experience import _PROMPT_FIELDS, _TOKEN_FIELDS, Experience

Lengths = list[tuple[int, int]]  # (prompt span, response span) per sequence


def sequence_lengths(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> Lengths:
    """Each row's prompt span (from its first real prompt token to the end, left padding) and
    response span (up to its last response token, right padding).

    Args:
        prompt_mask: (B, P) 0/1. response_mask: (B, T) 0/1.
    """
    return list(zip(_span(prompt_mask.flip(-1)).tolist(), _span(response_mask).tolist()))


def _span(mask: torch.Tensor) -> torch.Tensor:
    """(B,) per row: one past the last non-zero column, 0 when there is none."""
    cols = torch.arange(1, mask.shape[1] + 1)
    return torch.where(mask != 0, cols, 0).amax(dim=-1) if mask.shape[1] else torch.zeros(mask.shape[0], dtype=torch.long)


def kept_columns(lengths: Lengths, group: list[int]) -> tuple[int, int]:
    """(prompt, response) columns of the group once the padding common to its rows is cut; at
    least one of each (a forward pass needs a prompt token to predict the first response token)."""
    return max([1, *(lengths[i][0] for i in group)]), max([1, *(lengths[i][1] for i in group)])


def group_width(lengths: Lengths, group: list[int]) -> int:
    """Columns of the group's trimmed forward pass (0 for an empty group)."""
    return sum(kept_columns(lengths, group)) if group else 0


def group_cost(lengths: Lengths, group: list[int]) -> int:
    """Positions (real and padding) of the group's forward pass: rows x trimmed width."""
    return len(group) * group_width(lengths, group)


def fixed_groups(batch_size: int, size: int) -> list[list[int]]:
    """Consecutive micro-batches of ``size`` sequences (the last one may be shorter)."""
    return [list(range(start, min(start + size, batch_size))) for start in range(0, batch_size, size)]


def token_budget_groups(lengths: Lengths, budget: int) -> list[list[int]]:
    """Group sequences so that each group's trimmed forward pass holds at most ``budget`` positions.

    Sequences are taken longest first (ties by index) and added to the open group while its cost
    stays within the budget; otherwise they open a new group. A sequence longer than the budget
    gets a group of its own. Every index appears exactly once; the result depends only on the
    lengths, so every call with the same input gives the same groups, each listed in index order.
    """
    if budget < 1:
        raise ValueError(f"a token budget must be >= 1, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-(lengths[i][0] + lengths[i][1]), i))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and group_cost(lengths, current + [i]) > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return [sorted(g) for g in groups]


def balance_groups(groups: list[list[int]], count: int, lengths: Lengths) -> list[list[int]]:
    """Stretch ``groups`` to exactly ``count`` micro-batches, so that every data-parallel rank runs
    the same number of forward/backward passes (DeepSpeed's ZeRO collectives pair them up).

    The costliest group of two or more sequences is halved until the count is reached (smaller
    passes instead of idle ones); if there are fewer sequences than ``count``, empty groups (``[]``)
    fill the rest: the caller runs a stand-in pass that contributes nothing.
    """
    if count < len(groups):
        raise ValueError(f"cannot balance {len(groups)} micro-batches down to {count}")
    groups = [list(g) for g in groups]
    while len(groups) < count:
        splittable = [k for k, g in enumerate(groups) if len(g) > 1]
        if not splittable:
            break
        k = max(splittable, key=lambda k: (group_cost(lengths, groups[k]), -k))
        group = groups[k]
        half = len(group) // 2
        groups[k : k + 1] = [group[:half], group[half:]]
    return groups + [[] for _ in range(count - len(groups))]


@dataclass(frozen=True)
class MicroBatch:
    """One forward pass: rows of the batch, and the columns kept once the padding common to those
    rows is cut. No rows means a stand-in pass (see `balance_groups`)."""

    rows: list[int]
    prompt_start: int = 0  # first prompt column kept (left padding before it is cut)
    response_end: int | None = None  # response columns kept (right padding after them is cut); None: all

    def take(self, exp: Experience) -> Experience:
        """The micro-batch's sub-batch of ``exp``. A stand-in is row 0 cut to its last prompt token
        and one response column, with no response token: its losses are 0 and so are its gradients,
        but it runs the same forward and backward as a real micro-batch."""
        if not self.rows:
            part = _cut(exp.select(slice(0, 1)), exp.prompt_ids.shape[1] - 1, 1)
            none = {"model_mask": torch.zeros_like(part.model_mask)} if part.model_mask is not None else {}
            return dataclasses.replace(part, response_mask=torch.zeros_like(part.response_mask), **none)
        return _cut(exp.select(torch.tensor(self.rows)), self.prompt_start, self.response_end)

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """The same rows and response columns of a (B, T) tensor that is not in the `Experience`."""
        rows = self.rows or [0]
        end = self.response_end if self.rows else 1
        return x[torch.tensor(rows)][:, :end]

    def put(self, out: torch.Tensor, part: torch.Tensor) -> None:
        """Write this micro-batch's (rows, kept columns) result back into the (B, T) ``out``."""
        if self.rows:
            out[torch.tensor(self.rows), : part.shape[1]] = part.to(out.dtype)


def _cut(exp: Experience, prompt_start: int, response_end: int | None) -> Experience:
    """``exp`` without its first ``prompt_start`` prompt columns and past ``response_end`` response ones."""
    if prompt_start == 0 and response_end is None:
        return exp
    updates = {name: getattr(exp, name)[:, prompt_start:] for name in _PROMPT_FIELDS}
    updates.update({name: getattr(exp, name)[:, :response_end] for name in _TOKEN_FIELDS if getattr(exp, name) is not None})
    return dataclasses.replace(exp, **updates)


def plan_micro_batches(
    prompt_mask: torch.Tensor,
    response_mask: torch.Tensor,
    micro_batch_size: int,
    token_budget: int = 0,
    agree: Callable[[int], int] = lambda count: count,
) -> list[MicroBatch]:
    """The micro-batches of a batch with these masks ((B, P) and (B, T)).

    Without a token budget: ``micro_batch_size`` consecutive rows each, untrimmed (as they always
    were). With one: `token_budget_groups`, each trimmed to its own lengths, stretched by
    `balance_groups` to ``agree(count)`` micro-batches, where ``agree`` returns the largest count
    of any data-parallel rank (an all-reduce in the learner), so that every rank runs as many.
    """
    if not token_budget:
        return [MicroBatch(rows) for rows in fixed_groups(prompt_mask.shape[0], micro_batch_size)]
    lengths = sequence_lengths(prompt_mask, response_mask)
    groups = token_budget_groups(lengths, token_budget)
    groups = balance_groups(groups, agree(len(groups)), lengths)
    plan = []
    for rows in groups:
        prompt, response = kept_columns(lengths, rows)
        plan.append(MicroBatch(rows, prompt_mask.shape[1] - prompt, response))
    return plan


def padded_positions(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """``(padding positions, all positions)`` of one forward pass over these masks."""
    total = prompt_mask.numel() + response_mask.numel()
    real = int((prompt_mask != 0).sum()) + int((response_mask != 0).sum())
    return total - real, total


# -- statistics of a mini-batch's micro-batches --------------------------------------------------

@dataclass
class MicroStats:
    """One micro-batch's statistics, grouped by how they add up over micro-batches and ranks."""

    summed: dict[str, float] = field(default_factory=dict)  # losses, already divided by the global count
    weighted: dict[str, float] = field(default_factory=dict)  # means over its tokens: weighted by them
    maxima: dict[str, float] = field(default_factory=dict)

    def __or__(self, other: MicroStats) -> MicroStats:
        """The statistics of two models' passes over the same micro-batch (the policy's and the critic's)."""
        return MicroStats({**self.summed, **other.summed}, {**self.weighted, **other.weighted},
                          {**self.maxima, **other.maxima})


class MicroBatchStats:
    """A mini-batch's statistics from its micro-batches', the same whatever the grouping: losses
    summed (the token-weighted total), means weighted by each micro-batch's response tokens, maxima."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weighted: dict[str, float] = {}
        self.maxima: dict[str, float] = {}
        self.tokens = 0.0

    def add(self, stats: MicroStats, tokens: float) -> None:
        self.tokens += tokens
        for name, value in stats.summed.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        for name, value in stats.weighted.items():
            self.weighted[name] = self.weighted.get(name, 0.0) + tokens * value
        for name, value in stats.maxima.items():
            self.maxima[name] = max(self.maxima.get(name, value), value)

    def vectors(self) -> tuple[list[float], list[float]]:
        """(values to sum over ranks, values to take the maximum of), in a fixed order: the sums, the
        weighted numerators and the token count; then the maxima."""
        summed = [self.sums[n] for n in sorted(self.sums)] + [self.weighted[n] for n in sorted(self.weighted)]
        return [*summed, self.tokens], [self.maxima[n] for n in sorted(self.maxima)]

    def result(self, summed: list[float] | None = None, maxed: list[float] | None = None) -> dict[str, float]:
        """The combined statistics; ``summed``/``maxed`` are `vectors()` reduced over the ranks."""
        own_summed, own_maxed = self.vectors()
        summed = own_summed if summed is None else summed
        maxed = own_maxed if maxed is None else maxed
        names = sorted(self.sums) + sorted(self.weighted)
        totals, tokens = dict(zip(names, summed[:-1])), summed[-1]
        out = {n: totals[n] for n in sorted(self.sums)}
        out.update({n: totals[n] / tokens if tokens > 0 else 0.0 for n in sorted(self.weighted)})
        out.update(zip(sorted(self.maxima), maxed))
        return out
