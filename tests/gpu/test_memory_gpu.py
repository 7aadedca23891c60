"""The whole learner estimate against the measured peak on a GPU (within 15%).

A Qwen2-0.5B-shaped model with random bf16 weights (written to a temp dir, no download) is trained
for one step by the real `rlhf_dist.learner.rank.Learner` (one DeepSpeed rank, NCCL, ZeRO-2): the planner's
learner peak (`rlhf_dist.planning.memory_formulas.learner_estimate`: weights, fp32 master, Adam states, gradients,
buckets, activations, logits) is compared with ``torch.cuda.max_memory_allocated`` over building the
engine, the old-logprob pass and the train step, with and without gradient checkpointing.
Needs CUDA and DeepSpeed (no Ray: the learner runs in this process).
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# Qwen2-0.5B's shape (config.json of Qwen/Qwen2-0.5B): 494M parameters, tied embeddings.
QWEN2_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-6,
)
PROMPT, RESPONSE, MICRO = 256, 256, 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen2-05b-shape") / "model"
    Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B)).to(torch.bfloat16).save_pretrained(path)
    return str(path)


def _experience(batch: int, vocab: int):
    from rlhf_dist.experience import Experience

    g = torch.Generator().manual_seed(0)
    return Experience(
        prompt_ids=torch.randint(0, vocab, (batch, PROMPT), generator=g),
        prompt_mask=torch.ones(batch, PROMPT, dtype=torch.long),
        response_ids=torch.randint(0, vocab, (batch, RESPONSE), generator=g),
        response_mask=torch.ones(batch, RESPONSE),
        rollout_logprobs=torch.full((batch, RESPONSE), -10.0),
        advantages=torch.randn(batch, RESPONSE, generator=g),
        values=torch.zeros(batch, RESPONSE), returns=torch.zeros(batch, RESPONSE),
    )


@pytest.mark.parametrize("checkpointing", [False, True], ids=["full-activations", "gradient-checkpointing"])
def test_learner_peak_within_15_percent(model_dir, checkpointing):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed here")
    from transformers import Qwen2Config

    from rlhf_dist.config import load_config
    from rlhf_dist.learner.rank import Learner
    from rlhf_dist.planning.memory_formulas import GIB, learner_estimate, shape_from_config
    from rlhf_dist.weight_sync.group import free_port

    cfg = load_config(None, [
        "model.dtype=bfloat16", "algorithm.name=grpo", "learner.num_workers=1", "learner.zero_stage=2",
        f"learner.micro_batch_size={MICRO}", f"learner.mini_batch_size={MICRO}",
        f"learner.gradient_checkpointing={str(checkpointing).lower()}",
        "learner.optimizer.fused=false",  # FusedAdam's JIT build is slow; Adam's states are the same size
        f"data.max_prompt_tokens={PROMPT}", f"rollout.sampling.max_new_tokens={RESPONSE}",
        f"rollout.max_model_len={PROMPT + RESPONSE}", "rollout.prompts_per_step=2", f"rollout.samples_per_prompt={MICRO // 2}",
    ])
    planned = learner_estimate(cfg, shape_from_config(Qwen2Config(**QWEN2_05B)))

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    learner = Learner(cfg, model_dir, rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port())
    learner.train(_experience(MICRO, QWEN2_05B["vocab_size"]), kl_coef=0.0)
    measured = torch.cuda.max_memory_allocated() - before
    items = ", ".join(f"{k} {v / GIB:.2f}" for k, v in planned.items.items())
    print(f"\ncheckpointing={checkpointing}: planned peak {planned.peak / GIB:.2f} GiB ({items}); "
          f"measured {measured / GIB:.2f} GiB; error {100 * (planned.peak - measured) / measured:+.1f}%")
    del learner
    torch.cuda.empty_cache()
    assert planned.peak == pytest.approx(measured, rel=0.15)
