"""The collapse and no-signal alarms on constructed series: each fires when it should, and not on
the curves of runs that learn (the demo's PPO drifts to ~1.7 nats/token in 12 steps: no alarm)."""

import torch

from rlhf_dist.config.schema import MonitorConfig
from rlhf_dist.driver.health import HealthMonitor


def run(monitor, series, scores=None):
    """Feed (kl_token, entropy) per step; returns each step's metrics and lines."""
    out = []
    for step, (kl, entropy) in enumerate(series):
        out.append(monitor.check(step, kl, entropy, scores if scores is not None else torch.arange(8.0)))
    return out


def test_a_learning_run_raises_nothing():
    demo_ppo = [(0.0, 4.82), (0.211, 4.09), (0.238, 4.08), (0.408, 4.03), (0.547, 3.88), (0.699, 3.68), (0.837, 3.6),
                (0.994, 3.56), (1.057, 3.49), (1.196, 3.36), (1.377, 3.13), (1.691, 2.89)]
    for metrics, lines in run(HealthMonitor(MonitorConfig(), group_size=4), demo_ppo):
        assert lines == [] and metrics["monitor/kl_alarm"] == metrics["monitor/entropy_alarm"] == 0.0
        assert metrics["monitor/no_signal_alarm"] == 0.0 and metrics["reward/zero_spread_frac"] == 0.0


def test_kl_over_budget_a_jump_and_a_non_finite_kl_each_fire():
    monitor = HealthMonitor(MonitorConfig(), group_size=4)
    (_, quiet), (m1, over), (_, _), (m3, jump), (m4, nan) = run(
        monitor, [(0.05, 5.0), (6.0, 5.0), (0.05, 5.0), (0.9, 5.0), (float("nan"), 5.0)])
    assert quiet == [] and m1["monitor/kl_alarm"] == 1.0
    assert over == ["KL alarm at step 1: KL to the reference is 6 nats/token, above monitor.kl_token_budget=4: the policy "
                    "is drifting fast; lower learner.optimizer.lr or raise algorithm.kl.coef"]
    assert m3["monitor/kl_alarm"] == 1.0 and "jumped from 0.05 to 0.9 nats/token in one step" in jump[0]
    assert m4["monitor/kl_alarm"] == 1.0 and "not finite: the policy diverged" in nan[0] and monitor.diverged
    off = HealthMonitor(MonitorConfig(kl_token_budget=None, kl_jump=None), group_size=4)
    assert all(lines == [] for _, lines in run(off, [(0.05, 5.0), (60.0, 5.0)]))


def test_entropy_collapse_below_its_share_of_the_first_value():
    (_, _), (m1, ok), (m2, collapsed) = run(HealthMonitor(MonitorConfig(), group_size=4), [(0.0, 6.0), (0.1, 0.5), (0.1, 0.2)])
    assert ok == [] and m1["monitor/entropy_alarm"] == 0.0
    assert m2["monitor/entropy_alarm"] == 1.0
    assert collapsed == ["entropy alarm at step 2: policy entropy fell to 0.2 nats/token, below monitor.entropy_floor=0.05 "
                         "of its first value 6: the policy collapsed to a few answers; lower learner.optimizer.lr, or "
                         "raise sampling temperature"]


def test_no_signal_after_n_steps_without_spread_in_any_group_and_the_count_resets():
    monitor = HealthMonitor(MonitorConfig(no_signal_steps=3), group_size=4)
    flat = torch.zeros(8)
    half = torch.tensor([0.0, 0, 0, 0, 0, 1, 0, 0])
    results = [monitor.check(s, 0.0, 5.0, scores) for s, scores in enumerate([flat, flat, half, flat, flat, flat, flat])]
    assert [m["monitor/no_signal_alarm"] for m, _ in results] == [0, 0, 0, 0, 0, 1, 1]
    assert [m["reward/zero_spread_frac"] for m, _ in results][:3] == [1.0, 1.0, 0.5]
    assert results[5][1] == ["no learning signal: every sample of every prompt got the same reward (0) for 3 steps "
                             "(steps 3..5); advantages are zero, so nothing is learned. Check the reward function, or "
                             "the task's difficulty"]
    single = HealthMonitor(MonitorConfig(no_signal_steps=1), group_size=1)  # one sample per prompt: the batch is the group
    assert single.check(0, 0.0, 5.0, torch.tensor([0.0, 1.0]))[0]["monitor/no_signal_alarm"] == 0.0
    assert single.check(1, 0.0, 5.0, torch.ones(2))[0]["monitor/no_signal_alarm"] == 1.0


def test_the_alarm_state_survives_a_checkpoint():
    monitor = HealthMonitor(MonitorConfig(), group_size=4)
    run(monitor, [(0.1, 6.0), (0.2, 5.0)], scores=torch.zeros(8))
    restored = HealthMonitor(MonitorConfig(), group_size=4)
    restored.load_state_dict(monitor.state_dict())
    assert (restored.first_entropy, restored.last_kl, restored.zero_spread_steps) == (6.0, 0.2, 2)
