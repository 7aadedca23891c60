"""A learner world torn down and joined again in one process builds working engines.

An in-process vLLM engine destroys the default process group when it shuts down; DeepSpeed keeps a
clone of the old world group per process. A learner built after that (tests share processes; so does
an actor that hosts both) must not reach for the dead clone (it failed with "Group ... is not
registered" at the engine's first broadcast).
"""

import pytest
import torch
import torch.distributed as dist

from rlhf_dist.config import load_config
from rlhf_dist.learner.engine import build_engine, init_learner_world
from rlhf_dist.weight_sync.group import free_port


def _engine_step() -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1))
    cfg = load_config(None, ["learner.num_workers=1", "learner.micro_batch_size=2", "learner.mini_batch_size=2",
                           "learner.zero_stage=2"])
    engine = build_engine(model, cfg.learner, "float32", 1e-2, 1)
    engine.train()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    return float(loss)


@pytest.mark.skipif(torch.cuda.is_available(), reason="gloo world on CPU")
def test_an_engine_builds_in_a_fresh_world_after_the_last_was_destroyed():
    if not dist.is_initialized():
        init_learner_world(0, 1, "127.0.0.1", free_port())
    first = _engine_step()
    dist.destroy_process_group()  # what vLLM's shutdown does to the default group
    assert not dist.is_initialized()

    init_learner_world(0, 1, "127.0.0.1", free_port())
    assert _engine_step() == pytest.approx(first)  # same seed, same model: the same first loss
