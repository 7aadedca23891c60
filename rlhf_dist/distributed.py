"""Joining the learners' DeepSpeed world, and the model-state views that weight sync and saving need."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
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


def build_engine(model: torch.nn.Module, learner, dtype: str, lr: float, world_size: int, schedule=None):
    """A DeepSpeed engine for ``model`` with an AdamW client optimizer (`make_optimizer`).

    ``learner`` is a LearnerConfig: ZeRO stage, micro/mini batch sizes (gradient accumulation is
    mini / (micro x world)), gradient clipping. ``schedule`` (an `rlhf_dist.schedule.LRSchedule`)
    scales ``lr``; DeepSpeed steps it after each applied optimizer step and checkpoints its state.
    The engine starts in eval mode; callers switch to train mode around their updates (dropout
    is already 0 in the model, so the mode only decides whether gradient checkpointing runs).
    """
    import deepspeed

    from rlhf_dist.schedule import lr_scheduler

    from rlhf_dist.memory import ALLGATHER_BUCKET, PREFETCH_BUCKET, REDUCE_BUCKET

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, learner, lr)
    scheduler = lr_scheduler(optimizer, schedule) if schedule is not None else None
    zero = {"stage": learner.zero_stage, "reduce_bucket_size": REDUCE_BUCKET, "allgather_bucket_size": ALLGATHER_BUCKET}
    if learner.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = PREFETCH_BUCKET
    if learner.offload in ("optimizer", "all"):  # validation: optimizer needs ZeRO >= 1, all needs ZeRO 3
        zero["offload_optimizer"] = {"device": "cpu"}
    if learner.offload == "all":
        zero["offload_param"] = {"device": "cpu"}
    ds_config = {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": learner.mini_batch_size // (learner.micro_batch_size * world_size),
        "gradient_clipping": learner.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # offload with torch AdamW (CPU runs) is allowed, only slower
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    engine.eval()
    from rlhf_dist.checkpoint import safe_checkpoint_engine

    engine.checkpoint_engine = safe_checkpoint_engine()  # safetensors + JSON, never pickle
    return engine


def make_optimizer(params: list[torch.nn.Parameter], learner, lr: float) -> torch.optim.Optimizer:
    """``learner.optimizer.fused``: auto takes DeepSpeed's FusedAdam on CUDA under ZeRO 1-3
    (DeepSpeedCPUAdam when the optimizer is offloaded), torch AdamW elsewhere. Stage 0 always
    keeps `SkippingAdamW`: there DeepSpeed leaves the non-finite check to the optimizer."""
    from rlhf_dist.errors import UserError

    opt = learner.optimizer
    if opt.fused is True and not torch.cuda.is_available():
        raise UserError("learner.optimizer.fused=true needs CUDA (DeepSpeed's FusedAdam); this learner has no "
                        "GPU: use learner.optimizer.fused=auto or false")
    kwargs = dict(lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    if opt.fused is not False and torch.cuda.is_available() and learner.zero_stage > 0:
        if learner.offload != "none":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kwargs)
    return SkippingAdamW(params, **kwargs)


class SkippingAdamW(torch.optim.AdamW):
    """AdamW that skips a step whose gradients hold NaN or inf, and says so in ``overflow``.

    ZeRO stages 1-3 make this check themselves (all-reduced across ranks) before calling us; for
    stage 0 DeepSpeed hands the all-reduced gradients straight here, so every rank decides alike.
    DeepSpeed reads ``overflow`` to report ``engine.was_step_applied()``.
    """

    overflow = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.overflow = bool(grads) and not all(bool(torch.isfinite(g).all()) for g in grads)
        if self.overflow:
            return None
        return super().step(closure)


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
    from rlhf_dist.adapters import AdapterSpec

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
