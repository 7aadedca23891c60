"""`EngineSpec`: what a rollout engine reads from the run's config, as one small record.

Ray pickles it to each `RolloutWorker`; the worker never sees the whole `RunConfig`, so this record
is the full list of what the engines depend on. It lives apart from engines.py, which imports both
engines, so that each engine can import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf_dist.config.schema import RunConfig


@dataclass(frozen=True)
class EngineSpec:
    """One rollout engine's settings; `from_config` is the one place that reads `RunConfig` for them."""

    engine: Literal["vllm", "hf"]  # which engine `make_engine` builds (rollout.engine)
    model_path: str  # the policy weights the engine starts from
    tokenizer_path: str  # model.tokenizer, else the tokenizer saved beside the weights
    dtype: str  # weights' dtype: float32 | bfloat16 | float16 (model.dtype)
    trust_remote_code: bool  # let transformers and vLLM run code shipped with the model
    seed: int  # the engine's own seed (run seed + worker index); each request carries its own as well
    tensor_parallel_size: int  # vllm: GPUs per engine
    max_model_len: int  # vllm: longest prompt + response, in tokens
    gpu_memory_utilization: float  # vllm: share of each GPU's memory for weights and KV cache
    kv_cache_gib: float  # vllm on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)
    colocate: bool  # shares GPUs with the learners: vLLM sleeps while they train (placement.colocate)
    lora_rank: int | None  # rank of the adapters each sync sends (learner.lora.r); None = LoRA off, full weights
    multi_turn: bool = False  # serves the turns of trajectories (rollout.multi_turn is set)

    @classmethod
    def from_config(cls, cfg: RunConfig, model_path: str, seed: int) -> EngineSpec:
        """The spec of one engine of the run: ``model_path`` is the resolved policy directory (a
        built tiny model, a hub name), ``seed`` the worker's own (the launcher adds its index)."""
        return cls(
            engine=cfg.rollout.engine,
            model_path=model_path,
            tokenizer_path=cfg.model.tokenizer or model_path,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
            seed=seed,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            max_model_len=cfg.rollout.max_model_len,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            kv_cache_gib=cfg.rollout.kv_cache_gib,
            colocate=cfg.placement.colocate,
            lora_rank=cfg.learner.lora.r if cfg.learner.lora.enabled else None,
            multi_turn=cfg.rollout.multi_turn is not None,
        )
