"""Choosing the rollout engine: vLLM, or transformers where vLLM cannot run. Both return the same
`Sample`s and load weights the same way.
"""

from __future__ import annotations

from rlhf_dist.rollout.hf_engine import HFEngine
from rlhf_dist.rollout.spec import EngineSpec
from rlhf_dist.rollout.vllm_engine import VLLMEngine


def make_engine(spec: EngineSpec) -> VLLMEngine | HFEngine:
    return VLLMEngine(spec) if spec.engine == "vllm" else HFEngine(spec)
