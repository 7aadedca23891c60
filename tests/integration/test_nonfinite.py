"""A NaN loss, through the real learners: the update is skipped on every rank, counted, and K in a
row stop the run with a message.

The fault is injected where a real one would enter the loss: one advantage (at a response token
inside the mask) is set to NaN after the advantages are computed, on chosen steps. Everything
downstream — two DeepSpeed ZeRO-2 ranks, the overflow check, the weight sync — is the real thing.
"""

import pytest
import ray
import torch

import rlhf_dist.driver.loop as driver_module
from launch.roles import build_roles, stop_roles
from launch.run import PROBE_TEXT
from rlhf_dist.config import load_config
from rlhf_dist.data import load_prompts
from rlhf_dist.driver.loop import Driver
from rlhf_dist.driver.remote_calls import RunFailed
from rlhf_dist.metrics.logger import MetricsLogger
from rlhf_dist.models.loading import load_tokenizer
from rlhf_dist.models.tiny import make_tiny


def _weights(driver):
    return ray.get([l.full_state_dict.remote() for l in driver.roles.learners])[0]


def test_nan_loss_skips_the_update_counts_it_and_stops_after_k_in_a_row(ray_cluster, tmp_path, monkeypatch):
    poisoned = {1, 3, 4}
    real = driver_module.compute_advantages

    def advantages_with_a_nan(exp, algo, kl_coef, group_size):
        stats = real(exp, algo, kl_coef, group_size)
        if current_step[0] in poisoned:
            row = int(torch.nonzero(exp.response_mask.sum(-1) > 0)[0])
            exp.advantages[row, 0] = float("nan")
        return stats

    monkeypatch.setattr(driver_module, "compute_advantages", advantages_with_a_nan)
    current_step = [0]

    model_path = str(make_tiny(tmp_path / "tiny").policy)
    cfg = load_config(None, ["recovery.max_nonfinite_steps=2", "rollout.prompts_per_step=8",
                             "learner.mini_batch_size=32", "placement.learner.num_cpus=0.5"])
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data, tokenizer, cfg.seed).prompts
    roles, sync_address = build_roles(cfg, model_path)
    try:
        with MetricsLogger(tmp_path / "run", tensorboard=False, progress=False) as metrics:
            driver = Driver(cfg, roles, prompts, tokenizer.pad_token_id, tokenizer(PROBE_TEXT).input_ids,
                            metrics, sync_address, tmp_path / "run")
            driver.sync.open()
            records, weights = [], [_weights(driver)]
            for step in range(5):
                current_step[0] = step
                if step == 4:
                    with pytest.raises(RunFailed) as stop:
                        driver.step(step)
                    break
                records.append(driver.step(step))
                weights.append(_weights(driver))

        def changed(a, b):
            return any(not torch.equal(a[k], b[k]) for k in a)

        assert changed(weights[0], weights[1]), "a clean step must update the policy"
        assert not changed(weights[1], weights[2]), "the NaN step's update must be skipped"
        assert changed(weights[2], weights[3]), "training goes on after a skipped step"
        assert not changed(weights[3], weights[4])
        assert all(torch.isfinite(t).all() for t in weights[4].values())
        assert [r["train/skipped_steps"] for r in records] == [0, 1, 1, 2]
        assert [r["train/nonfinite_loss"] > 0 for r in records] == [False, True, False, True]
        assert all(r["sync/verified"] == 1.0 for r in records)
        message = str(stop.value)
        assert "NaN or inf in 2 steps in a row (steps 3..4)" in message
        assert "recovery.max_nonfinite_steps" in message
    finally:
        stop_roles(roles, shutdown=False)
