"""LoRA (peft): wrapping a model with adapters on the right target modules."""

from __future__ import annotations

import torch


def with_lora(model: torch.nn.Module, lora, task_type: str) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters (``lora`` is a LoraConfig section) on `lora_targets`."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora, task_type), task_type=task_type,
    )
    return get_peft_model(model, peft_config)


def lora_targets(model: torch.nn.Module, lora, task_type: str) -> list[str] | str:
    """``lora.target_modules``, plus a causal LM's output head when ``lora.adapt_head``.

    peft's all-linear leaves the head out. On a random-init model that head gives near-uniform
    logits, and behind the final RMSNorm (fixed hidden norm) the body alone can raise a token's
    probability only a little: on the default tiny model to 4% at most, entropy >= 6.13 of ln 512
    = 6.24. A head tied to the input embeddings is left alone: a merged export could not keep a
    head delta apart from the embeddings it shares its weight with.
    """
    head = model.get_output_embeddings() if task_type == "CAUSAL_LM" else None
    inputs = model.get_input_embeddings()
    if not lora.adapt_head or head is None or (inputs is not None and head.weight is inputs.weight):
        return lora.target_modules
    head_name = next(name for name, module in model.named_modules() if module is head)
    if lora.target_modules == "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    else:
        names = set(lora.target_modules)
    return sorted(names | {head_name})
