"""A multi-turn step on the driver: failed trajectories' groups dropped (their slots padded with
copies that carry no loss), model-token masks and turn rewards in the batch, the error budget, and
the advantages over model tokens only."""

import json

import pytest
import torch

from rlhf_dist.algorithms import gae, select_groups
from rlhf_dist.config import load_config
from rlhf_dist.data import Prompt
from rlhf_dist.driver.batch_producer import RolloutPipeline
from rlhf_dist.driver.remote_calls import RunFailed
from rlhf_dist.driver.rounds import ScoredRound, _with_turn_rewards
from rlhf_dist.driver.shaping import compute_advantages, last_token_scores
from rlhf_dist.driver.trajectories import record_errors, trajectory_metrics
from rlhf_dist.experience import Experience
from rlhf_dist.rewards import RewardResult
from rlhf_dist.rollout.requests import Sample, TurnInfo

N = 2
PROMPTS = [Prompt(i, f"prompt {i}", [5, 6 + i], {}) for i in range(4)]
MULTI = ["rollout.prompts_per_step=2", f"rollout.samples_per_prompt={N}", "learner.mini_batch_size=4",
         "learner.micro_batch_size=2", "rollout.multi_turn.env=examples.envs.word_echo:WordEchoEnv",
         "reward.components=[]"]


def trajectory(p: int, s: int, failed: bool = False) -> Sample:
    """Prompt 3 tokens; response: model 2, env 2, model 2 tokens; a turn reward of 0.5 on each turn."""
    if failed:
        error = {"step": 0, "prompt_index": p, "sample_index": s, "attempt": 0, "turn": 1, "phase": "step",
                 "error": {"type": "RuntimeError", "message": "boom"}, "traceback": "...", "transcript": [], "seconds": 0.1}
        return Sample(p, s, [], [], "", multi=TurnInfo([1, 2, 3], [], [], 0, "error", [], [], errors=[error]))
    info = TurnInfo([1, 2, 3], [1, 1, 0, 0, 1, 1], [{"role": "assistant", "content": "a"}], 2, "done", [0.5, 0.5],
                    [1, 5], counts={"tool_calls": 1}, seconds={"env": 0.25, "tools": 0.5})
    return Sample(p, s, [7, 8, 9, 9, 7, 8], [-1.0, -1.0, 0.0, 0.0, -1.0, -1.0], f"r{p}.{s}", multi=info)


def scored(samples: list[Sample], graded: list[float]) -> ScoredRound:
    ok = [i for i, s in enumerate(samples) if not s.multi.failed]
    rewards = _with_turn_rewards(RewardResult(torch.tensor(graded), {}, None), [samples[i] for i in ok], ok, len(samples))
    return ScoredRound(samples, [PROMPTS[s.prompt_index] for s in samples], rewards)


def test_a_group_with_a_failed_trajectory_is_dropped_and_its_slot_padded_without_loss():
    p = RolloutPipeline(load_config(None, MULTI), roles=None, prompts=PROMPTS, pad_token_id=0, sampler=None,
                        version=lambda: 0)
    round_ = scored([trajectory(0, 0), trajectory(0, 1, failed=True), trajectory(1, 0), trajectory(1, 1)], [0.0, 1.0, 0.0])
    batch, stats, fillers = p._assemble([round_], 2)
    exp = batch.exp
    assert exp.prompt_index.tolist() == [1, 1, 1, 1]  # group 1, then its copy in group 0's slot
    assert exp.trainable.tolist() == [1.0, 1.0, 0.0, 0.0] and fillers == 1
    assert "" not in batch.responses  # the failed trajectory is nowhere in the batch
    assert exp.scores.tolist() == [2.0, 1.0, 2.0, 1.0]  # components plus the turn rewards (0.5 + 0.5)
    assert exp.model_mask[0].tolist() == [1, 1, 0, 0, 1, 1]
    assert exp.turn_rewards[0].tolist() == [0, 0.5, 0, 0, 0, 0.5]
    assert exp.loss_mask[2].sum() == 0 and exp.loss_mask[0].tolist() == [1, 1, 0, 0, 1, 1]
    assert stats["reward/mean"] == 1.5  # over the real rows only
    assert stats["rollout/error_frac"] == 0.25 and stats["rollout/dropped_groups"] == 1.0
    assert stats["rollout/stop/error"] == 1.0 and stats["rollout/stop/done"] == 3.0
    assert stats["rollout/turns_mean"] == 2.0 and stats["rollout/env_errors"] == 1.0
    assert stats["rollout/obs_token_frac"] == pytest.approx(2 / 6)
    assert batch.turns[0]["model_tokens"] == 4 and batch.turns[0]["total_tokens"] == 9


def test_too_many_failures_stop_the_run_with_one_paragraph(tmp_path):
    errors = tmp_path / "rollout_errors.jsonl"
    p = RolloutPipeline(load_config(None, [*MULTI, "rollout.multi_turn.errors.max_error_frac=0.2"]), roles=None,
                        prompts=PROMPTS, pad_token_id=0, sampler=None, version=lambda: 0, errors_path=errors)
    round_ = scored([trajectory(0, 0), trajectory(0, 1, failed=True), trajectory(1, 0), trajectory(1, 1)], [0.0, 1.0, 0.0])
    with pytest.raises(RunFailed) as raised:
        p._check_trajectories(4, round_)
    message = str(raised.value)
    assert "1 of 4 trajectories failed" in message and "examples.envs.word_echo:WordEchoEnv raised RuntimeError: boom" in message
    assert str(errors) in message
    assert [json.loads(line)["prompt_index"] for line in errors.read_text().splitlines()] == [0]


def test_the_first_step_stops_when_every_trajectory_failed():
    p = RolloutPipeline(load_config(None, [*MULTI, "rollout.multi_turn.errors.max_error_frac=1.0"]), roles=None,
                        prompts=PROMPTS, pad_token_id=0, sampler=None, version=lambda: 0)
    all_failed = scored([trajectory(0, s, failed=True) for s in range(N)], [])
    p._check_trajectories(3, all_failed)  # a later step within the budget goes on
    with pytest.raises(RunFailed, match="and it is the first step"):
        p._check_trajectories(0, all_failed)


def test_select_groups_never_picks_a_dropped_group_and_pads_with_copies():
    uniform = [torch.tensor([False, True, False])]
    dropped = [torch.tensor([True, False, False])]
    selection = select_groups(uniform, 3, dropped)
    assert selection.slots == [(0, 2), (0, 1), (0, 2)] and selection.informative == 1 and selection.padding == 1
    with pytest.raises(ValueError, match="every group was dropped"):
        select_groups(uniform, 3, [torch.tensor([True, True, True])])


def test_gae_over_model_tokens_skips_the_gaps():
    """With env tokens between two turns, GAE equals GAE over the model tokens alone, packed."""
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    rewards, values = torch.tensor([[0.0, 0.5, 9.0, 9.0, 1.0, 9.0]]), torch.tensor([[0.1, 0.2, 7.0, 7.0, 0.3, 7.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    packed_adv, packed_ret = gae(rewards[:, [0, 1, 4]], values[:, [0, 1, 4]], torch.ones(1, 3), 0.9, 0.8)
    assert torch.allclose(adv[:, [0, 1, 4]], packed_adv) and torch.allclose(ret[:, [0, 1, 4]], packed_ret)
    assert adv[0, [2, 3, 5]].tolist() == [0, 0, 0]
    assert last_token_scores(torch.tensor([2.0]), mask).tolist() == [[0, 0, 0, 0, 2.0, 0]]


def test_ppo_puts_each_turn_reward_at_its_turn_and_the_rest_at_the_last_model_token():
    cfg = load_config(None, ["algorithm.name=ppo", "algorithm.whiten_advantages=false", "algorithm.kl.coef=0"])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    exp = Experience(prompt_ids=torch.ones(1, 2, dtype=torch.long), prompt_mask=torch.ones(1, 2),
                     response_ids=torch.ones(1, 5, dtype=torch.long), response_mask=torch.ones(1, 5),
                     rollout_logprobs=torch.zeros(1, 5), model_mask=mask, ref_logprobs=torch.zeros(1, 5),
                     values=torch.zeros(1, 5), scores=torch.tensor([3.0]),
                     turn_rewards=torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]))
    compute_advantages(exp, cfg.algorithm, 0.0, 1)
    assert exp.token_rewards.tolist() == [[0.0, 1.0, 0.0, 2.0, 0.0]]  # 3 = turn reward 1 + components 2
    assert exp.advantages[0, [2, 4]].tolist() == [0.0, 0.0]


def test_metrics_and_error_records_of_a_step(tmp_path):
    samples = [trajectory(0, 0), trajectory(0, 1, failed=True)]
    metrics = trajectory_metrics(samples, dropped_groups=1)
    assert metrics["timing/env"] == 0.25 and metrics["timing/tools"] == 0.5
    assert metrics["rollout/tool_calls_mean"] == 1.0 and metrics["rollout/turns_max"] == 2.0
    path = tmp_path / "errors.jsonl"
    record_errors(path, samples)
    record_errors(path, samples)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["phase"] == "step" and rows[0]["error"]["message"] == "boom"
