"""`EngineSpec.from_config`: every field of a rollout engine's record comes from its config key.

The configs set every key to a value unlike its default, so a field read from the wrong key (or
left at a default) shows. No engine starts here: the engines' constructors read only this record.
"""

import dataclasses
import pickle

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.rollout.spec import EngineSpec

# A GPU layout that validates without colocation: two GPUs per engine for tensor parallelism.
TENSOR_PARALLEL = ["placement.rollout.num_gpus=2", "rollout.tensor_parallel_size=2"]
# Colocation validates with a GPU share on both sides and one engine per learner rank.
COLOCATED = ["placement.colocate=true", "placement.rollout.num_gpus=0.5", "placement.learner.num_gpus=0.5",
             "rollout.num_workers=2"]


def test_every_field_comes_from_its_config_key():
    cfg = load_config(None, [
        *TENSOR_PARALLEL, "seed=5", "rollout.engine=hf", "model.tokenizer=/data/tokenizer", "model.dtype=bfloat16",
        "model.trust_remote_code=true", "rollout.max_model_len=200", "rollout.gpu_memory_utilization=0.7",
        "rollout.kv_cache_gib=3.5", "learner.lora.enabled=true", "learner.lora.r=16",
    ])
    spec = EngineSpec.from_config(cfg, "/models/policy", seed=7)
    assert spec == EngineSpec(
        engine="hf",
        model_path="/models/policy",
        tokenizer_path="/data/tokenizer",
        dtype="bfloat16",
        trust_remote_code=True,
        seed=7,  # the worker's seed as the launcher passes it, not cfg.seed
        tensor_parallel_size=2,
        max_model_len=200,
        gpu_memory_utilization=0.7,
        kv_cache_gib=3.5,
        colocate=False,
        lora_rank=16,
    )


def test_defaults_fall_back_to_the_model_and_full_weights():
    """No tokenizer of its own: the model directory's; LoRA off: no rank, so syncs send full weights."""
    cfg = load_config(None, ["learner.lora.r=16"])  # a rank set while LoRA is off must not leak through
    spec = EngineSpec.from_config(cfg, "/models/policy", seed=cfg.seed)
    assert spec.engine == "vllm"
    assert spec.tokenizer_path == "/models/policy"
    assert spec.lora_rank is None
    assert spec.colocate is False


def test_a_multi_turn_run_gets_a_multi_turn_engine():
    """vLLM on CPU caches KV in smaller blocks for trajectories (rlhf_dist/rollout/vllm_engine.py)."""
    multi = load_config(None, ["rollout.multi_turn.env=examples.envs.word_echo:WordEchoEnv", "reward.components=[]"])
    assert EngineSpec.from_config(multi, "/models/policy", seed=0).multi_turn is True
    assert EngineSpec.from_config(load_config(None, []), "/models/policy", seed=0).multi_turn is False


def test_colocation_reaches_the_engine():
    cfg = load_config(None, COLOCATED)
    assert EngineSpec.from_config(cfg, "/models/policy", seed=0).colocate is True


def test_the_record_pickles_and_is_frozen():
    """Ray pickles the record to each RolloutWorker; the engine must not change what it was given."""
    cfg = load_config(None, [*TENSOR_PARALLEL, "learner.lora.enabled=true", "model.tokenizer=/data/tokenizer"])
    spec = EngineSpec.from_config(cfg, "/models/policy", seed=3)
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy is not spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 4  # type: ignore[misc]
