"""Joining the learners' DeepSpeed world, and the model-state views that weight sync and saving need."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


def init_learner_world(rank: int, world_size: int, master_addr: str, master_port: int) -> str:
    """Join the learners' data-parallel world; returns the backend (nccl on GPU, gloo on CPU)."""
    import deepspeed

    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",  # Ray gives each learner actor its own GPU(s), visible as device 0
    )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        # On CPU, DeepSpeed's first init JIT-compiles a shared-memory op (~2 min) that only
        # inference all-reduce uses. The plain `import deepspeed.comm.torch` binds the real torch
        # package, so reach the module through importlib (STACK-NOTES).
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return backend


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
    """peft's ``base_model.model.x.base_layer.weight`` -> ``x.weight``."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
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
        if id(param) not in covered:
            entries.append(WeightEntry(_hf_name(name), [param], lambda p=param: p.data))
    return entries


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter], zero3: bool) -> Iterator[None]:
    """Under ZeRO-3, materialise full ``params`` on every rank (a collective: all ranks call)."""
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
