"""Loading models and tokenizers, and the one function that turns logits into token log-probs.

The rollout engine, the reference and the learner must compute the *same* distribution, or the
logprob-mismatch metric is meaningless: all of them use :func:`response_logprobs`, which divides
the logits by the sampling temperature (vLLM's ``processed_logprobs`` mode does the same).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rlhf_dist.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """A tokenizer with a pad token: the eos token stands in (one warning) when there is none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # a missing, corrupt or foreign file: transformers raises many kinds
        raise UserError(
            f"cannot load a tokenizer from {str(path)!r}: {_load_failure(exc)}; point model.path (or "
            "model.tokenizer) at a Hugging Face model directory or hub name"
        ) from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UserError(
                f"the tokenizer at {str(path)!r} has neither a pad nor an eos token; add a pad token "
                "to its tokenizer_config.json"
            )
        log.warning("tokenizer at %s has no pad token; using its eos token %r as pad", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """A Hugging Face causal LM from a directory or hub name, in ``dtype``, with dropout off.

    Every dropout probability in the model config is set to 0 before the model is built (as
    OpenRLHF does), so a learner in train mode computes the same log-probs as the rollout and
    the reference: the first PPO ratio is exactly 1.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf_dist.preflight import looks_local

    if not Path(str(path)).exists() and looks_local(str(path)):
        raise UserError(f"model directory {str(path)!r} does not exist; check model.path")
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), config=_zero_config_dropout(config), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # missing or truncated weights (SafetensorError), a bad config.json, ...
        raise UserError(f"cannot load a causal LM from {str(path)!r}: {_load_failure(exc)}") from None
    return disable_dropout(model)


def _load_failure(exc: Exception) -> str:
    """transformers' reason in one line; the type too where the text alone is cryptic (KeyError: 'added_tokens')."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0].rstrip(".")
    return text if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {text}"


def _is_dropout_field(name: str, value) -> bool:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and ("dropout" in name or name.endswith("pdrop"))


def _zero_config_dropout(config):
    """Set every dropout probability of a transformers config (and its sub-configs) to 0."""
    from transformers import PretrainedConfig

    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _zero_config_dropout(value)
        elif _is_dropout_field(name, value):
            setattr(config, name, 0.0)
    return config


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Switch dropout off in an already built model: ``nn.Dropout`` modules, the float dropout
    rates attention modules copy from the config at build time, and the config itself.

    For models loaded elsewhere (the PPO critic, the reward model) and as a backstop for
    architectures that hard-code a rate; returns ``model``.
    """
    from torch.nn.modules.dropout import _DropoutNd

    for module in model.modules():
        if isinstance(module, _DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout_field(name, value):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            _zero_config_dropout(config)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations during backward (transformers checkpoints only
    in train mode). Non-reentrant checkpointing needs no input that requires grad, so it also
    works under peft LoRA, where the embeddings are frozen."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


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


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, L), right padded."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, L), left padded."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask
