"""Restore in place, PPO under ZeRO-3: save after two steps, take a third, load the checkpoint back
into the same actors, take the third again — the two versions of the step must be identical.

This covers what the e2e resume test (GRPO, ZeRO-2) does not: the critic's DeepSpeed state,
ZeRO-3 partitions, and restoring into live actors whose weights had moved on.
"""


from launch.roles import build_roles, stop_roles
from launch.run import PROBE_TEXT
from rlhf_dist.checkpoints.files import checkpoint_dirs
from rlhf_dist.config import load_config
from rlhf_dist.data import load_prompts
from rlhf_dist.driver.loop import Driver
from rlhf_dist.metrics.logger import MetricsLogger
from rlhf_dist.models.loading import load_tokenizer
from rlhf_dist.models.tiny import make_tiny

VOLATILE = ("timing/", "throughput/", "sync/seconds", "sync/mb_per_s")


def test_ppo_zero3_step_after_restore_equals_the_original(ray_cluster, tmp_path):
    model_path = str(make_tiny(tmp_path / "tiny").policy)
    cfg = load_config(None, ["algorithm.name=ppo", "learner.zero_stage=3", "algorithm.kl.mode=reward",
                             "algorithm.kl.kind=k1", "rollout.prompts_per_step=8", "learner.mini_batch_size=16",
                             "checkpoint.keep_last=1", "placement.learner.num_cpus=0.5"])
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data, tokenizer, cfg.seed).prompts
    roles, sync_address = build_roles(cfg, model_path)
    run_dir = tmp_path / "run"
    try:
        with MetricsLogger(run_dir, tensorboard=False, progress=False) as metrics:
            driver = Driver(cfg, roles, prompts, tokenizer.pad_token_id, tokenizer(PROBE_TEXT).input_ids,
                            metrics, sync_address, run_dir)
            driver.sync.open()
            for step in range(2):
                driver.step(step)
            saved = driver.save_checkpoint(2)
            original = driver.step(2)
            driver.step(3)  # move further away from the checkpoint
            assert driver.policy_version == 4

            assert driver.restore(saved) == 2
            assert driver.policy_version == 2
            driver.sync.push(driver.policy_version)
            again = driver.step(2)
        assert checkpoint_dirs(run_dir) == [saved]
        same = {k: v for k, v in original.items() if not k.startswith(VOLATILE)}
        assert same == {k: v for k, v in again.items() if not k.startswith(VOLATILE)}
        assert "critic/value_loss" in same and same["policy_version"] == 2
    finally:
        stop_roles(roles, shutdown=False)
