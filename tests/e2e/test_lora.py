"""LoRA on the default task, run as a user runs it: it learns, and every sync carries only the adapter.

Before the output head got an adapter, this run stayed flat (gold 0.077 -> 0.097 over 20 steps,
entropy at ln 512): behind the final RMSNorm the body alone cannot sharpen a random head's logits.
"""

from statistics import mean

import torch

from launch.run import train
from rlhf_dist.config import load_config
from rlhf_dist.models.loading import load_causal_lm
from rlhf_dist.models.lora import with_lora


def test_lora_learns_the_default_task_and_syncs_only_its_adapter(tmp_path):
    cfg = load_config(None, ["learner.lora.enabled=true", "logging.tensorboard=false", "checkpoint.every=0"])
    run_dir = tmp_path / "run"
    records = train(cfg, run_dir, progress=False).records
    gold = [r["reward/gold_mean"] for r in records]
    first, last = mean(gold[:5]), mean(gold[-5:])
    assert last - first >= 0.3, f"LoRA did not learn: gold {first:.3f} (first 5 steps) -> {last:.3f} (last 5)"
    assert records[-1]["policy/entropy"] < 5.5, "the policy stayed near uniform (ln 512 = 6.24)"

    base = load_causal_lm(run_dir / "tiny-model" / "policy")
    adapter = with_lora(load_causal_lm(run_dir / "tiny-model" / "policy"), cfg.learner.lora, "CAUSAL_LM")
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapter.parameters() if p.requires_grad)
    assert all(r["sync/verified"] == 1.0 and r["sync/bytes"] == adapter_bytes for r in records)
    assert max(r["rollout/logprob_abs_diff"] for r in records) < 1e-4  # vLLM serves what the learner trains

    # The merged export keeps the head's adapter: its lm_head moved away from the base model's.
    final = load_causal_lm(run_dir / "final")
    assert not torch.allclose(final.lm_head.weight, base.lm_head.weight)
    torch.testing.assert_close(final.model.embed_tokens.weight, base.model.embed_tokens.weight, rtol=0, atol=0)
