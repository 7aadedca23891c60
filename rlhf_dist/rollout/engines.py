"""Choosing the rollout engine: vLLM, or transformers where vLLM cannot run. Both return the same
`Sample`s and load weights the same way.
"""

from __future__ import annotations

from rlhf_dist.config.schema import RunConfig
from rlhf_dist.rollout.hf_engine import HFEngine
from rlhf_dist.rollout.vllm_engine import VLLMEngine


def make_engine(model_path: str, cfg: RunConfig, seed: int) -> VLLMEngine | HFEngine:
    return VLLMEngine(model_path, cfg, seed) if cfg.rollout.engine == "vllm" else HFEngine(model_path, cfg, seed)
