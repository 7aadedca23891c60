"""Views of a model's state that weight sync and saving need: the tensors under their Hugging Face
names (`weight_entries`), the LoRA adapter tensors alone, and full state dicts gathered under ZeRO-3.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from rlhf_dist.weight_sync.adapters import AdapterSpec


@dataclass
class WeightEntry:
    """One Hugging Face checkpoint tensor and how to compute it from the (maybe LoRA) model."""

    name: str
    params: list[torch.nn.Parameter]  # the parameters to gather under ZeRO-3
    compute: Callable[[], torch.Tensor]

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.params[0]
        return tuple(getattr(first, "ds_shape", first.shape))

    @property
    def dtype(self) -> str:
        return str(self.params[0].dtype)


def _hf_name(name: str) -> str:
    """peft's ``base_model.model.x.base_layer.weight`` -> ``x.weight``; a trained copy of a whole
    module (``score.modules_to_save.default.weight``) -> ``score.weight``."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
    return name.replace(".base_layer.", ".")


def weight_entries(model: torch.nn.Module) -> list[WeightEntry]:
    """The model's weights as Hugging Face checkpoint tensors; LoRA layers come merged."""
    from peft.tuners.lora import LoraLayer

    entries: list[WeightEntry] = []
    covered: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        adapter = module.active_adapters[0]
        prefix = _hf_name(module_name)
        params = [base.weight, module.lora_A[adapter].weight, module.lora_B[adapter].weight]
        entries.append(
            WeightEntry(
                f"{prefix}.weight",
                params,
                lambda m=module, b=base, a=adapter: b.weight.data + m.get_delta_weight(a).to(b.weight.dtype),
            )
        )
        if getattr(base, "bias", None) is not None:
            entries.append(WeightEntry(f"{prefix}.bias", [base.bias], lambda b=base: b.bias.data))
        covered.update(id(p) for p in module.parameters())
    for name, param in model.named_parameters():
        if ".original_module." in name:  # peft keeps the untrained original beside modules_to_save
            continue
        if id(param) not in covered:
            entries.append(WeightEntry(_hf_name(name), [param], lambda p=param: p.data))
    return entries


def adapter_entries(model: torch.nn.Module) -> list[WeightEntry]:
    """A peft model's LoRA factors under peft's saved names (``...q_proj.lora_A.weight``): what
    adapter-only sync sends. Raises if anything else trains (it would not reach the generators)."""
    from peft.tuners.lora import LoraLayer

    entries: list[WeightEntry] = []
    covered: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapter = module.active_adapters[0]
        for factor in ("lora_A", "lora_B"):
            param = getattr(module, factor)[adapter].weight
            entries.append(WeightEntry(f"{module_name}.{factor}.weight", [param], lambda p=param: p.data))
            covered.add(id(param))
    stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if stray:
        raise ValueError(f"adapter-only sync would leave trained parameters behind: {stray[:4]}")
    return entries


def adapter_spec(model: torch.nn.Module):
    """The `AdapterSpec` of a peft model's active LoRA adapter, for the generators to rebuild it."""
    config = model.peft_config[model.active_adapter]
    targets = config.target_modules
    return AdapterSpec(config.r, float(config.lora_alpha), (targets,) if isinstance(targets, str) else tuple(sorted(targets)))


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter], zero3: bool) -> Iterator[None]:
    """Under ZeRO-3, materialise full ``params`` on every rank (a collective: all ranks call)."""
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@torch.no_grad()
def full_state_dict(model: torch.nn.Module, zero3: bool, rank: int) -> dict[str, torch.Tensor]:
    """All ranks call this; rank 0 gets the Hugging Face state dict (LoRA merged), others {}."""
    state = {}
    for entry in weight_entries(model):
        with gathered(entry.params, zero3):
            if rank == 0:
                state[entry.name] = entry.compute().detach().cpu().clone()
    return state
