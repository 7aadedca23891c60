"""The real PPO learner (one DeepSpeed rank, gloo, in this process): it trains in train mode with
gradient checkpointing recomputing every layer, computes log-probs and values in eval mode, logs
the scheduled LR, and a restored checkpoint continues the LR schedule exactly. The SFT stage
trainer likewise checkpoints in train mode and decays its LR over epochs x optimizer steps.

A forward pre-hook on decoder layer 0 of the policy and of the critic records ``module.training``
at each call; a checkpointed training forward shows up twice (forward, recompute in backward).
"""

import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.experience import Experience
from rlhf_dist.learner.lr_schedule import LRSchedule, rl_optimizer_steps
from rlhf_dist.learner.rank import Learner
from rlhf_dist.weight_sync.group import free_port

BATCH, MICRO, MINI = 16, 4, 8  # 4 micro-batches per pass; 2 optimizer steps per train() call
LR, CRITIC_LR = 1e-3, 2e-3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, max_position_embeddings=64, attention_dropout=0.3,
    )
    path = tmp_path_factory.mktemp("learner") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def _learner(model_dir: str, *overrides: str) -> Learner:
    cfg = load_config(None, [
        "steps=4", "learner.num_workers=1", f"learner.micro_batch_size={MICRO}", f"learner.mini_batch_size={MINI}",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", f"learner.optimizer.lr={LR}",
        f"learner.optimizer.critic_lr={CRITIC_LR}", *overrides,
    ])
    return Learner(cfg, model_dir, rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port())


def _experience(seed: int) -> Experience:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(BATCH, 6)
    mask[::3, 4:] = 0
    return Experience(
        prompt_ids=torch.randint(0, 96, (BATCH, 5), generator=g), prompt_mask=torch.ones(BATCH, 5, dtype=torch.long),
        response_ids=torch.randint(0, 96, (BATCH, 6), generator=g), response_mask=mask,
        rollout_logprobs=torch.full((BATCH, 6), -4.0), advantages=torch.randn(BATCH, 6, generator=g),
        values=torch.zeros(BATCH, 6), returns=torch.randn(BATCH, 6, generator=g),
    )


def _record_modes(module: torch.nn.Module) -> list[bool]:
    calls: list[bool] = []
    module.register_forward_pre_hook(lambda m, args: calls.append(m.training))
    return calls


def test_ppo_learner_checkpoints_in_train_mode_and_measures_in_eval_mode(model_dir, tmp_path):
    learner = _learner(model_dir, "algorithm.name=ppo", "learner.gradient_checkpointing=true",
                       "learner.optimizer.scheduler=linear", "learner.optimizer.warmup_steps=3",
                       "learner.optimizer.min_lr_ratio=0.5")
    policy_calls = _record_modes(learner.policy.module.model.layers[0])
    critic_calls = _record_modes(learner.critic.module.backbone.layers[0])

    values = learner.values(_experience(0))
    assert critic_calls == [False] * 4 and values.shape == (BATCH, 6)
    critic_calls.clear()
    stats = learner.train(_experience(0), kl_coef=0.0).means
    # 4 micro-batches of old log-probs in eval mode, then 4 training micro-batches in train mode,
    # each seen twice: the forward and its recompute in backward.
    assert policy_calls == [False] * 4 + [True] * 8
    assert critic_calls == [True] * 8
    assert not learner.policy.module.training and not learner.critic.module.training

    # The saved config's dropout is gone, so train-mode log-probs equal the eval-mode old ones:
    # every ratio is exactly 1 (the first optimizer step has LR 0 in warmup, so both mini-batches).
    assert learner.policy.module.config.attention_dropout == 0.0
    assert stats["policy/ratio_max"] == 1.0 and stats["policy/ratio_mean"] == 1.0

    # Optimizer steps 0 and 1 ran; the last used warmup factor 1/3. The horizon: 4 steps x 2.
    assert rl_optimizer_steps(learner.cfg) == 8
    assert stats["train/lr"] == pytest.approx(LR / 3)
    assert stats["train/critic_lr"] == pytest.approx(CRITIC_LR / 3)

    # Resume: save after this step, take two more, restore, retake them: identical LRs and losses.
    learner.save_checkpoint(str(tmp_path / "ckpt"))
    first = [learner.train(_experience(s), kl_coef=0.0) for s in (1, 2)]  # whole TrainStats, compared below
    schedule = LRSchedule("linear", warmup_steps=3, total_steps=8, min_lr_ratio=0.5)
    assert first[0].means["train/lr"] == pytest.approx(LR * schedule(3))  # end of warmup: 1
    assert first[1].means["train/lr"] == pytest.approx(LR * schedule(5))  # decaying: 0.5 + 0.5 * 3/5
    learner.load_checkpoint(str(tmp_path / "ckpt"))
    again = [learner.train(_experience(s), kl_coef=0.0) for s in (1, 2)]
    assert again == first


def test_without_checkpointing_nothing_is_recomputed(model_dir):
    learner = _learner(model_dir, "learner.gradient_checkpointing=false")
    calls = _record_modes(learner.policy.module.model.layers[0])
    stats = learner.train(_experience(0), kl_coef=0.0).means
    assert calls == [False] * 4 + [True] * 4
    assert stats["train/lr"] == LR  # constant schedule, no warmup
    assert "train/critic_lr" not in stats


def test_sft_stage_follows_the_schedule_over_its_epochs_and_checkpoints(model_dir):
    from rlhf_dist.config.stages import StageConfig
    from rlhf_dist.stages.stage_data import SFTExample
    from rlhf_dist.stages.trainer import StageTrainer

    cfg = StageConfig(epochs=2, model={"path": model_dir}, learner={
        "num_workers": 1, "mini_batch_size": 4, "micro_batch_size": 2, "gradient_checkpointing": True,
        "optimizer": {"lr": LR, "scheduler": "cosine", "warmup_steps": 1, "min_lr_ratio": 0.1},
    })
    trainer = StageTrainer("sft", cfg, model_dir, pad_id=0, rank=0, world_size=1, addr="127.0.0.1", port=free_port())
    calls = _record_modes(trainer.engine.module.model.layers[0])
    g = torch.Generator().manual_seed(3)
    examples = [SFTExample(torch.randint(1, 96, (4,), generator=g).tolist(), torch.randint(1, 96, (5,), generator=g).tolist())
                for _ in range(10)]  # 2 whole mini-batches of 4 per epoch; 2 examples left over
    trainer.train_epoch(examples)
    assert calls == [True] * 8  # 4 micro-batches, each forward + recompute
    assert not trainer.engine.module.training
    assert trainer.schedule.total_steps == 4  # 2 epochs x 2 optimizer steps
    schedule = LRSchedule("cosine", warmup_steps=1, total_steps=4, min_lr_ratio=0.1)
    assert trainer.engine.get_lr()[0] == pytest.approx(LR * schedule(2))  # the next step's LR
    trainer.train_epoch(examples)
    assert trainer.engine.get_lr()[0] == pytest.approx(LR * 0.1)  # the horizon reached: the floor
