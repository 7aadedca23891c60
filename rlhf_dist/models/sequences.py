"""Sequence maths: the one function that turns logits into token log-probs, reward-model inputs and
scores, and padding.

The rollout engine, the reference and the learner must compute the *same* distribution, or the
logprob-mismatch metric is meaningless: all of them use :func:`response_logprobs`, which divides
the logits by the sampling temperature (vLLM's ``processed_logprobs`` mode does the same).
Padding happens here and nowhere else: token rows (`left_pad`, `right_pad`) and tensors joined into
one batch (`pad_to_width`).
"""

from __future__ import annotations

import torch


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under ``softmax(logits / temperature)``.

    Args:
        prompt_ids, prompt_mask: (B, P), left padded.
        response_ids, response_mask: (B, T), right padded.
    Returns:
        (logprobs, entropy), each (B, T) float32; entropy is None unless ``with_entropy``.
        Entries outside ``response_mask`` are meaningless.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    # Left padding shifts the positions of every real token; give each its true position.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    # No KV cache: it is never reused here, and it would keep every layer's keys and values alive,
    # undoing gradient checkpointing.
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
    prompt_len, resp_len = prompt_ids.shape[1], response_ids.shape[1]
    # The logits at position P + t - 1 predict response token t.
    logits = logits[:, prompt_len - 1 : prompt_len - 1 + resp_len].float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    token_logprobs = log_probs.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(log_probs.exp() * log_probs).sum(-1)
    return token_logprobs, entropy


def reward_input_ids(tokenizer, prompt: str, response: str) -> list[int]:
    """How a reward model reads a pair, in training and in scoring alike: prompt, then response, no eos.

    A prompt rendered by a chat template already holds its special tokens (the template writes
    BOS), so it is tokenised as written; a plain text prompt gets the tokenizer's own.
    """
    bos = tokenizer.bos_token
    templated = bool(bos) and prompt.startswith(bos)
    ids = tokenizer(prompt, add_special_tokens=not templated).input_ids
    return ids + tokenizer(response, add_special_tokens=False).input_ids


def sequence_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) scalar scores of a sequence-classification model at each row's last real token.

    Rows are right padded. Pooling by the attention mask (not by searching for the pad id, as
    transformers does) stays right when the pad token equals the eos token.
    """
    if hasattr(model, "get_base_model"):  # peft: the wrapped model, with its LoRA layers in place
        model = model.get_base_model()
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.long().sum(-1) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(pooled).squeeze(-1).float()


def right_pad(rows: list[list], pad, mask_dtype: torch.dtype = torch.long,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, mask), both (B, width), right padded with ``pad``; ``width`` defaults to the longest row.
    The values' dtype follows the rows (ids: long, log-probs: float32); the mask is 1 on real entries."""
    width = max(len(r) for r in rows) if width is None else width
    values = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=mask_dtype)
    return values, mask


def left_pad(rows: list[list], pad, mask_dtype: torch.dtype = torch.long,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, mask), both (B, width), left padded with ``pad``; as `right_pad` otherwise."""
    width = max(len(r) for r in rows) if width is None else width
    values = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=mask_dtype)
    return values, mask


def pad_to_width(x: torch.Tensor, width: int, left: bool) -> torch.Tensor:
    """``x`` with its last dim zero-padded to ``width``, on the left or the right (when batches of
    different widths are joined; pad id 0 sits under a 0 mask, so it is never read)."""
    missing = width - x.shape[-1]
    if missing == 0:
        return x
    pad = torch.zeros(*x.shape[:-1], missing, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], dim=-1)


@torch.no_grad()
def probe_logprobs(model: torch.nn.Module, token_ids: list[int], device: torch.device | str) -> list[float]:
    """Log-probs (temperature 1) of tokens 1.. of ``token_ids`` given their prefixes: what a weight
    sync compares between the learner and each transformers engine (vLLM has its own path)."""
    ids = torch.tensor([token_ids], device=device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].cpu().tolist()
