"""LoRA (peft): wrapping a model with adapters on the right target modules."""

from __future__ import annotations

import torch

from rlhf_dist.errors import UserError


def with_lora(model: torch.nn.Module, lora, task_type: str) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters (``lora`` is a LoraConfig section) on `lora_targets`."""
    from peft import LoraConfig, get_peft_model

    missing = unmatched_targets(model, lora.target_modules)
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"learner.lora.target_modules: {', '.join(map(repr, missing))} match(es) no module of the model; its "
            f"linear layers are named {', '.join(linear)} (or use all-linear)"
        )
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora, task_type), task_type=task_type,
    )
    return get_peft_model(model, peft_config)


def unmatched_targets(model: torch.nn.Module, targets: list[str] | str) -> list[str]:
    """The entries of a ``target_modules`` list that name no module (peft matches a module whose
    name is the entry or ends with ``.entry``); peft itself only fails when none matches at all."""
    if isinstance(targets, str):  # all-linear, or a regex: peft's to judge
        return []
    names = [name for name, _ in model.named_modules()]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


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
