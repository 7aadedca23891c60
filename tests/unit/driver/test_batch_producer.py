"""RolloutPipeline's pure parts: assembling a step's batch from sampling rounds (dynamic sampling,
overlong handling), and the batches produced ahead surviving a checkpoint round trip exactly."""

from types import SimpleNamespace

import torch

from rlhf_dist.config import load_config
from rlhf_dist.data import Prompt
from rlhf_dist.driver.batch_producer import Produced, RolloutPipeline
from rlhf_dist.driver.remote_calls import Roles
from rlhf_dist.driver.rounds import ScoredRound
from rlhf_dist.rewards import RewardResult
from rlhf_dist.rollout.requests import Sample
from tests.unit.driver.fake_roles import handle

N = 2  # samples per prompt


PROMPTS = [Prompt(i, f"prompt {i}", [5, 6 + i], {"answer": str(i)}) for i in range(8)]


def pipeline(*overrides: str, version: int = 3, roles=None) -> RolloutPipeline:
    cfg = load_config(None, ["rollout.prompts_per_step=2", f"rollout.samples_per_prompt={N}", "learner.mini_batch_size=4",
                             "learner.micro_batch_size=2", *overrides])
    return RolloutPipeline(cfg, roles=roles, prompts=PROMPTS, pad_token_id=0, sampler=None, version=lambda: version)


def round_of(prompt_indices: list[int], scores: list[float], truncated=()) -> ScoredRound:
    samples = [
        Sample(p, s, [7] * (1 + s + p % 3), [-0.5] * (1 + s + p % 3), f"r{p}.{s}", truncated=(p, s) in truncated)
        for p in prompt_indices for s in range(N)
    ]
    total = torch.tensor(scores)
    rewards = RewardResult(total=total, components={"rule": total.clone()}, gold=total * 2)
    return ScoredRound(samples, [PROMPTS[s.prompt_index] for s in samples], rewards)


def test_without_dynamic_sampling_the_first_round_is_the_batch():
    batch, stats, fillers = pipeline()._assemble([round_of([0, 1], [1.0, 1.0, 0.0, 1.0])], 2)
    assert batch.exp.prompt_index.tolist() == [0, 0, 1, 1] and fillers == 0
    assert batch.columns == {"answer": ["0", "0", "1", "1"]}
    assert batch.exp.policy_versions.tolist() == [3, 3, 3, 3]
    assert stats["reward/mean"] == 0.75 and stats["reward/gold_mean"] == 1.5
    assert "rollout/filtered_groups" not in stats


def test_dynamic_sampling_takes_informative_groups_from_later_rounds():
    p = pipeline("algorithm.dynamic_sampling=true")
    rounds = [round_of([0, 1], [1.0, 1.0, 0.0, 1.0]), round_of([2], [0.5, 0.0])]  # group 0 of round 0 is uniform
    batch, stats, fillers = p._assemble(rounds, 2)
    assert batch.exp.prompt_index.tolist() == [1, 1, 2, 2] and fillers == 0
    assert batch.responses == ["r1.0", "r1.1", "r2.0", "r2.1"]
    assert batch.exp.scores.tolist() == [0.0, 1.0, 0.5, 0.0]
    assert stats["rollout/filtered_groups"] == 1.0 and stats["rollout/sampling_rounds"] == 2.0


def test_out_of_rounds_the_batch_is_filled_with_uniform_groups_at_zero_advantage():
    p = pipeline("algorithm.dynamic_sampling=true")
    rounds = [round_of([0, 1], [1.0, 1.0, 0.0, 1.0]), round_of([2], [0.0, 0.0])]
    batch, stats, fillers = p._assemble(rounds, 2)
    assert batch.exp.prompt_index.tolist() == [1, 1, 0, 0] and fillers == 1
    produced = Produced(0, batch, stats, fillers=fillers)
    batch.exp.advantages = torch.ones(4, batch.exp.response_ids.shape[1])
    produced.zero_filler_advantages(N)
    assert batch.exp.advantages.sum(-1).tolist()[2:] == [0.0, 0.0] and batch.exp.advantages[:2].min() == 1.0
    assert stats["rollout/filtered_groups"] == 2.0 and stats["rollout/filler_groups"] == 1.0


def test_truncated_responses_are_recorded():
    batch, stats, _ = pipeline()._assemble([round_of([0, 1], [0.0, 1.0, 0.0, 1.0], truncated={(1, 0)})], 2)
    assert batch.exp.truncated.tolist() == [False, False, True, False] and stats["rollout/truncated_frac"] == 0.25


def test_batches_produced_ahead_survive_a_checkpoint_exactly(tmp_path):
    p = pipeline()
    batch, stats, _ = p._assemble([round_of([3, 1], [0.0, 1.0, 0.25, 1.0], truncated={(3, 1)})], 2)
    batch.exp.ref_logprobs = -torch.rand(batch.exp.response_ids.shape)
    p.ready[7] = Produced(7, batch, stats, {"generate": 0.5})
    p.save_ready(tmp_path)
    again = pipeline()
    again.load_ready(tmp_path)
    loaded = again.ready[7]
    for name in batch.exp._tensor_fields():
        a, b = getattr(batch.exp, name), getattr(loaded.batch.exp, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    assert loaded.batch.exp.reward_components.keys() == {"rule"}
    assert loaded.batch.exp.truncated.tolist() == [False, True, False, False]
    assert (loaded.batch.prompts, loaded.batch.responses, loaded.batch.columns) == (
        batch.prompts, batch.responses, batch.columns)
    assert loaded.stats == stats and loaded.timings == {"generate": 0.5}


def produce_with(p: RolloutPipeline, rounds: list[ScoredRound]) -> Produced:
    """`produce` over in-process roles that answer with the given rounds, one per sampling round (the
    sampler draws each round's prompts); what is left in ``rounds`` afterwards was never sampled."""
    queue = rounds
    generator = SimpleNamespace(generate=lambda requests, sampling, step=0: queue[0].samples)
    scorer = SimpleNamespace(score=lambda prompts, responses, columns, extras=None: queue.pop(0).rewards)
    p.roles = Roles(rollout=[handle(generator)], reward=[handle(scorer)], reference=[], learners=[])
    p.sampler = SimpleNamespace(next_batch=lambda n: sorted({s.prompt_index for s in queue[0].samples}))
    p._reference = lambda exp: torch.zeros(exp.response_ids.shape)
    return p.produce(0, lambda work: work())


def test_overlong_penalty_shapes_scores_and_mask_drops_truncated_sequences_from_the_loss():
    rounds = [round_of([0, 1], [1.0, 1.0, 1.0, 1.0], truncated={(0, 1)})]  # lengths 1, 2, 2, 3 tokens
    shaped = produce_with(pipeline("algorithm.overlong=penalty", "algorithm.overlong_buffer=2",
                                   "algorithm.overlong_penalty=0.5", "rollout.sampling.max_new_tokens=3"), rounds)
    # Lengths 1 2 2 3 against max 3 with a 2-token buffer: 0, -0.25, -0.25, -0.5.
    assert shaped.batch.exp.scores.tolist() == [1.0, 0.75, 0.75, 0.5]
    assert shaped.stats["reward/mean"] == 1.0  # logged raw, before the penalty
    rounds = [round_of([0, 1], [1.0, 0.0, 1.0, 1.0], truncated={(0, 1)})]
    masked = produce_with(pipeline("algorithm.overlong=mask"), rounds)
    assert masked.batch.exp.trainable.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert masked.batch.exp.loss_mask[1].sum() == 0 and masked.batch.exp.response_mask[1].sum() == 2


def test_dynamic_sampling_stops_sampling_once_the_batch_is_informative():
    p = pipeline("algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=3")
    rounds = [round_of([0, 1], [1.0, 1.0, 0.0, 1.0]), round_of([2], [0.0, 1.0]), round_of([3], [0.0, 1.0])]
    produced = produce_with(p, rounds)
    assert produced.stats["rollout/sampling_rounds"] == 2.0 and len(rounds) == 1  # round 3 never sampled
    assert produced.batch.exp.prompt_index.tolist() == [1, 1, 2, 2]
