"""LR schedules: the curve worked out by hand, the horizon from the config, and the scheduler state
surviving the safe checkpoint codec."""

import math

import pytest
import torch

from rlhf_dist.checkpoints.files import load_tree, save_tree
from rlhf_dist.config import ConfigError, load_config
from rlhf_dist.learner.lr_schedule import (
    LRSchedule,
    lr_scheduler,
    rl_optimizer_steps,
    schedule_from_config,
    stage_optimizer_steps,
)


def test_warmup_rises_linearly_from_zero_then_constant():
    f = LRSchedule("constant", warmup_steps=4, total_steps=100)
    assert [f(k) for k in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert f(10_000) == 1.0


def test_constant_without_warmup_is_one_everywhere():
    f = LRSchedule("constant", warmup_steps=0, total_steps=10, min_lr_ratio=0.3)  # the floor is for decays only
    assert {f(k) for k in range(0, 50, 7)} == {1.0}


def test_linear_decays_to_the_floor_at_the_horizon():
    # Warmup 2, horizon 10: decay over the 8 steps 2..10, from 1 to 0.1.
    f = LRSchedule("linear", warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    assert f(1) == 0.5
    assert f(2) == 1.0
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: 0.55
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.25)
    assert f(10) == pytest.approx(0.1)
    assert f(25) == pytest.approx(0.1)  # past the horizon it stays on the floor


def test_cosine_decays_to_the_floor_at_the_horizon():
    f = LRSchedule("cosine", warmup_steps=0, total_steps=8, min_lr_ratio=0.2)
    assert f(0) == 1.0
    # a quarter of the way: cos(pi/4) = 0.7071, so 0.2 + 0.8 * (1 + 0.7071) / 2 = 0.8828
    assert f(2) == pytest.approx(0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2)
    assert f(4) == pytest.approx(0.6)  # halfway: 0.2 + 0.8 * 0.5
    assert f(8) == pytest.approx(0.2)
    assert f(9) == pytest.approx(0.2)
    values = [f(k) for k in range(9)]
    assert values == sorted(values, reverse=True)


def test_cosine_with_no_floor_reaches_zero():
    f = LRSchedule("cosine", warmup_steps=3, total_steps=13)
    assert f(3) == 1.0 and f(8) == pytest.approx(0.5) and f(13) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kwargs", [{"kind": "exponential"}, {"min_lr_ratio": 1.5}, {"warmup_steps": -1}])
def test_bad_schedules_are_refused(kwargs):
    with pytest.raises(ValueError):
        LRSchedule(**kwargs)


def test_rl_horizon_counts_every_optimizer_step_of_the_run():
    cfg = load_config(None, ["steps=10", "rollout.prompts_per_step=16", "rollout.samples_per_prompt=4",
                             "learner.mini_batch_size=32", "learner.epochs=2"])
    # 64 sequences per step, 2 mini-batches of 32, 2 epochs, 10 steps.
    assert rl_optimizer_steps(cfg) == 10 * 2 * 2


def test_stage_horizon_counts_whole_mini_batches_per_rank():
    assert stage_optimizer_steps(examples_per_rank=17, per_rank_mini_batch=8, epochs=3) == 6
    assert stage_optimizer_steps(examples_per_rank=7, per_rank_mini_batch=8, epochs=3) == 0


def test_config_fields_reach_the_schedule():
    cfg = load_config(None, ["learner.optimizer.scheduler=cosine", "learner.optimizer.warmup_steps=5",
                             "learner.optimizer.min_lr_ratio=0.1"])
    assert schedule_from_config(cfg.learner.optimizer, 50) == LRSchedule("cosine", 5, 50, 0.1)
    assert load_config().learner.optimizer.scheduler == "constant"


@pytest.mark.parametrize("override", ["learner.optimizer.scheduler=step", "learner.optimizer.min_lr_ratio=2",
                                      "learner.optimizer.name=adamw"])
def test_bad_scheduler_config_is_an_error(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def _scheduler(schedule: LRSchedule, lr: float = 0.1):
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=lr)
    return optimizer, lr_scheduler(optimizer, schedule)


def test_lambda_lr_applies_the_schedule_to_the_optimizer():
    optimizer, scheduler = _scheduler(LRSchedule("linear", warmup_steps=2, total_steps=6, min_lr_ratio=0.0))
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])  # the LR the next optimizer.step() would use
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.05, 0.025, 0.0])


def test_scheduler_state_round_trips_through_the_safe_checkpoint_codec(tmp_path):
    """The state DeepSpeed saves holds only plain data (no lambda), and a fresh scheduler that
    loads it continues exactly where the first one was, schedule fields included."""
    optimizer, scheduler = _scheduler(LRSchedule("cosine", warmup_steps=3, total_steps=20, min_lr_ratio=0.1))
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"kind": "cosine", "warmup_steps": 3, "total_steps": 20, "min_lr_ratio": 0.1}]
    save_tree(state, tmp_path / "sched.safetensors")  # raises on any type it cannot write safely

    optimizer2, resumed = _scheduler(LRSchedule("constant", total_steps=0))  # built before the horizon is known
    resumed.load_state_dict(load_tree(tmp_path / "sched.safetensors"))
    assert resumed.lr_lambdas[0] == LRSchedule("cosine", 3, 20, 0.1)
    optimizer2.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"]  # DeepSpeed restores this with the optimizer
    for _ in range(15):
        assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        for opt, sched in ((optimizer, scheduler), (optimizer2, resumed)):
            opt.step()
            sched.step()
    assert resumed.last_epoch == scheduler.last_epoch == 22
