"""Joining the learners' DeepSpeed world and building a rank's engine and optimizer."""

from __future__ import annotations

import importlib
import os
import sys

import torch

from rlhf_dist.checkpoints.files import safe_checkpoint_engine
from rlhf_dist.errors import UserError
from rlhf_dist.learner.lr_schedule import lr_scheduler
from rlhf_dist.planning.memory_formulas import ALLGATHER_BUCKET, PREFETCH_BUCKET, REDUCE_BUCKET


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
    if not torch.distributed.is_initialized():
        # DeepSpeed caches a clone of the world group per process. If an earlier world in this
        # process was torn down (an in-process vLLM engine destroys the default group when it
        # shuts down), that clone belongs to no live world and the engine's first broadcast fails
        # with "Group ... is not registered"; a fresh world needs a fresh clone.
        importlib.import_module("deepspeed.utils.groups")._WORLD_GROUP = None
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return backend


def build_engine(model: torch.nn.Module, learner, dtype: str, lr: float, world_size: int, schedule=None):
    """A DeepSpeed engine for ``model`` with an AdamW client optimizer (`make_optimizer`).

    ``learner`` is a LearnerConfig: ZeRO stage, micro/mini batch sizes (gradient accumulation is
    mini / (micro x world)), gradient clipping. ``schedule`` (an `rlhf_dist.learner.lr_schedule.LRSchedule`)
    scales ``lr``; DeepSpeed steps it after each applied optimizer step and checkpoints its state.
    The engine starts in eval mode; callers switch to train mode around their updates (dropout
    is already 0 in the model, so the mode only decides whether gradient checkpointing runs).
    """
    import deepspeed


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
    import_muon_uncompiled()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    engine.eval()

    engine.checkpoint_engine = safe_checkpoint_engine()  # safetensors + JSON, never pickle
    return engine


MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def import_muon_uncompiled() -> None:
    """Import DeepSpeed's Muon optimizer module with torch.compile off. ZeRO's optimizer check (and
    its gradient reduction) imports it, and its kernels are ``torch.compile``-decorated at import,
    which pulls in TorchInductor: ~2.7 s of CPU per rank, for an optimizer we never build. With
    TORCHDYNAMO_DISABLE set only for this import the decorators return the plain functions; every
    later ``torch.compile`` in the process is untouched."""
    if MUON_MODULE in sys.modules:
        return
    before = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        importlib.import_module(MUON_MODULE)
    except ImportError:  # a DeepSpeed without Muon: nothing to avoid
        pass
    finally:
        if before is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = before


def make_optimizer(params: list[torch.nn.Parameter], learner, lr: float) -> torch.optim.Optimizer:
    """``learner.optimizer.fused``: auto takes DeepSpeed's FusedAdam on CUDA under ZeRO 1-3
    (DeepSpeedCPUAdam when the optimizer is offloaded), torch AdamW elsewhere. Stage 0 always
    keeps `SkippingAdamW`: there DeepSpeed leaves the non-finite check to the optimizer."""
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
