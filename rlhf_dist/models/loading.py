"""Loading models and tokenizers: Hugging Face directories or hub names, dropout off, gradient
checkpointing on request. Log-probs and padding: `rlhf_dist.models.sequences`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rlhf_dist.errors import UserError
from rlhf_dist.planning.machine_checks import looks_local

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


    if not Path(str(path)).exists() and looks_local(str(path)):
        raise UserError(f"model directory {str(path)!r} does not exist; check model.path")
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), config=_zero_config_dropout(config), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except Exception as exc:  # missing or truncated weights (SafetensorError), a bad config.json, ...
        raise UserError(f"cannot load a causal LM from {str(path)!r}: {_load_failure(exc)}") from None
    refuse_random_weights(info, path, "a causal LM")
    return disable_dropout(model)


def refuse_random_weights(info: dict, path: str | Path, expected: str) -> None:
    """Refuse a load in which Hugging Face initialised weights at random (``output_loading_info``'s
    missing keys): the directory holds another kind of model, and training on it would be noise."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(
            f"loading {str(path)!r} as {expected} would initialise {len(missing)} weight(s) at random ({shown}): "
            f"it holds another kind of model; point at {expected} directory"
        )


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
