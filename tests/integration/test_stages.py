"""SFT, reward model and DPO on real DeepSpeed learner actors (two ranks, gloo), tiny models."""

import json

import pytest
import torch

from launch.stages import run_stage
from rlhf_dist.config.schema import RewardConfig
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.data.synthetic import demonstrations, preference_pairs
from rlhf_dist.models.tiny import make_tiny
from rlhf_dist.rewards import CompositeReward

RAY_CPUS = 2
USER_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def stage_cfg(model_path, **overrides):
    return StageConfig(model={"path": str(model_path)}, logging={"tensorboard": False}, **overrides)


@pytest.fixture(scope="module")
def sft(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    base = make_tiny(root / "tiny").policy
    # A data.chat_template of the user's (the rows are text, so it renders nothing here) must travel
    # with the model the stage writes, so that the next stage renders chats the same way.
    cfg = stage_cfg(base, epochs=2, data={"chat_template": USER_TEMPLATE})
    return run_stage("sft", cfg, root / "sft", rows=demonstrations(384, seed=0))


def test_sft_lowers_the_held_out_loss_and_writes_a_model(sft):
    from transformers import AutoModelForCausalLM

    start, end = sft.history[0]["sft/eval_loss"], sft.history[-1]["sft/eval_loss"]
    assert end < 0.8 * start, f"held-out loss {start:.3f} -> {end:.3f}"
    AutoModelForCausalLM.from_pretrained(sft.model_dir)
    from rlhf_dist.models.loading import load_tokenizer

    assert load_tokenizer(sft.model_dir).chat_template == USER_TEMPLATE  # the stage's data.chat_template went with it


def test_reward_model_accuracy_calibration_and_normalised_scores(sft, tmp_path):
    held_out = preference_pairs(256, seed=7, label_noise=0.0)
    rm = run_stage(
        "rm", stage_cfg(sft.model_dir, epochs=3), tmp_path / "rm",
        rows=preference_pairs(768, seed=3, label_noise=0.0), eval_rows=held_out,
    )
    assert rm.metrics["rm/eval_accuracy"] >= 0.9
    assert {"rm/temperature", "rm/ece_before", "rm/ece_after"} <= set(rm.metrics)
    norm = json.loads((rm.model_dir / "reward_normalization.json").read_text())
    assert norm["std"] > 0

    # The PPO-time scorer reads the pair the way training did and applies the normalisation.
    scorer = CompositeReward(RewardConfig(components=[{"type": "model", "path": str(rm.model_dir), "name": "rm"}]))
    prompts = [r["prompt"] for r in held_out]
    chosen = scorer.score(prompts, [r["chosen"] for r in held_out]).total
    rejected = scorer.score(prompts, [r["rejected"] for r in held_out]).total
    assert (chosen > rejected).float().mean().item() == pytest.approx(rm.metrics["rm/eval_accuracy"], abs=0.01)
    assert abs(torch.cat([chosen, rejected]).mean().item()) < 1.0, "scores are not normalised"


def test_dpo_with_lora_raises_the_gold_preferred_rate(sft, tmp_path):
    cfg = stage_cfg(sft.model_dir, epochs=2, beta=0.1,
                    learner={"lora": {"enabled": True, "r": 8}, "optimizer": {"lr": 5e-3}})
    dpo = run_stage(
        "dpo", cfg, tmp_path / "dpo",
        rows=preference_pairs(384, seed=4, label_noise=0.1), eval_rows=preference_pairs(128, seed=8, label_noise=0.0),
    )
    start, end = dpo.history[0]["dpo/gold_preferred_rate"], dpo.history[-1]["dpo/gold_preferred_rate"]
    assert end > start + 0.1, f"gold-preferred rate {start:.3f} -> {end:.3f}"
    assert dpo.history[0]["dpo/eval_margin"] == pytest.approx(0.0, abs=1e-5), "reference must equal the start"
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(dpo.model_dir)  # LoRA merged into plain weights
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_rm_with_lora_under_zero3_saves_a_mergeable_scorer(sft, tmp_path):
    cfg = stage_cfg(sft.model_dir, epochs=2, learner={"lora": {"enabled": True}, "zero_stage": 3})
    held_out = preference_pairs(128, seed=9, label_noise=0.0)
    rm = run_stage("rm", cfg, tmp_path / "rm", rows=preference_pairs(384, seed=5, label_noise=0.0), eval_rows=held_out)
    # The saved directory is a plain sequence classifier (LoRA merged, peft's trained head kept).
    scorer = CompositeReward(RewardConfig(components=[{"type": "model", "path": str(rm.model_dir), "name": "rm"}]))
    prompts = [r["prompt"] for r in held_out]
    chosen = scorer.score(prompts, [r["chosen"] for r in held_out]).total
    rejected = scorer.score(prompts, [r["rejected"] for r in held_out]).total
    assert (chosen > rejected).float().mean().item() == pytest.approx(rm.metrics["rm/eval_accuracy"], abs=0.01)
    assert rm.metrics["rm/eval_accuracy"] > 0.8
