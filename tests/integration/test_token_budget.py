"""Token-budget micro-batches give the loss and the gradients of fixed-size micro-batches.

Real DeepSpeed learners (ZeRO-2, and ZeRO-3 for two ranks; gloo) train PPO with a KL loss on one batch of sequences of mixed
prompt and response lengths. The gradients each engine hands to its optimizer are read at the
optimizer step (`safe_get_full_grad`, before the step clears them) and compared, policy and
critic, to fp32 tolerance:

- one rank: fixed micro-batches of 4 vs a budget of 28 positions (groups of 1 to 4 sequences,
  each trimmed to its own lengths);
- two ranks (two processes): the same batch split unevenly, 8 + 4 sequences, against the one-rank
  run. The ranks form different numbers of groups; the short rank splits its groups and runs a
  stand-in pass, so both run the same number of backward passes, and the optimizer steps once.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp

from rlhf_dist.config import load_config
from rlhf_dist.experience import Experience
from rlhf_dist.learner.rank import Learner
from rlhf_dist.weight_sync.group import free_port

VOCAB, PROMPT, RESPONSE = 96, 6, 10
# (prompt, response) lengths; one response is empty (dropped from the loss, still padded around)
LENGTHS = [(6, 10), (1, 2), (3, 9), (2, 1), (6, 4), (1, 10), (4, 0), (5, 7), (2, 3), (6, 8), (1, 1), (3, 5)]
BUDGET = 28  # one rank: groups of 1, 2 and 4 rows; two ranks: 5 groups vs 4 rows -> a stand-in
LOSSES = ("policy/loss", "policy/kl_loss", "critic/value_loss")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("budget") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def _batch() -> Experience:
    g = torch.Generator().manual_seed(1)
    n = len(LENGTHS)
    prompt_mask, response_mask = torch.zeros(n, PROMPT, dtype=torch.long), torch.zeros(n, RESPONSE)
    for row, (p, r) in enumerate(LENGTHS):
        prompt_mask[row, PROMPT - p :] = 1
        response_mask[row, :r] = 1
    prompt_ids = torch.where(prompt_mask.bool(), torch.randint(1, VOCAB, (n, PROMPT), generator=g), 0)
    response_ids = torch.where(response_mask.bool(), torch.randint(1, VOCAB, (n, RESPONSE), generator=g), 0)
    return Experience(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
        rollout_logprobs=-torch.rand(n, RESPONSE, generator=g) - 4.0,
        ref_logprobs=-torch.rand(n, RESPONSE, generator=g) - 4.0,
        advantages=torch.randn(n, RESPONSE, generator=g), values=torch.randn(n, RESPONSE, generator=g) * 0.1,
        returns=torch.randn(n, RESPONSE, generator=g),
    )


def _learner(model_dir, rank, world, port, budget, zero_stage=2, extra=()) -> Learner:
    cfg = load_config(None, [
        "steps=1", f"learner.num_workers={world}", "learner.micro_batch_size=4", "learner.mini_batch_size=16",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "algorithm.name=ppo",
        "algorithm.kl.mode=loss", "algorithm.kl.kind=k3", "data.max_prompt_tokens=6",
        "rollout.sampling.max_new_tokens=10", f"learner.max_tokens_per_micro_batch={budget}",
        f"learner.zero_stage={zero_stage}", *extra,
    ])
    return Learner(cfg, model_dir, rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port)


def _train(learner: Learner, shard: Experience) -> tuple[dict, dict, int]:
    """One train() call: its statistics (`TrainStats.means`, a plain dict that crosses torch.save), the
    full gradients at the optimizer step, and the number of backward passes the policy ran."""
    from deepspeed.utils import safe_get_full_grad

    grads: dict[str, torch.Tensor] = {}
    backwards = []
    for name, engine in learner._engines():
        step, backward = engine.step, engine.backward

        def capture(*args, name=name, engine=engine, step=step, **kwargs):
            for pname, param in engine.module.named_parameters():
                grads[f"{name}.{pname}"] = safe_get_full_grad(param).detach().clone()  # a collective under ZeRO-2/3
            return step(*args, **kwargs)

        engine.step = capture
        if name == "policy":
            engine.backward = lambda *a, backward=backward, **k: backwards.append(1) or backward(*a, **k)
    stats = learner.train(shard, kl_coef=0.1)
    return stats.means, grads, len(backwards)


def _two_ranks(rank, port, model_dir, shards, zero_stage, out):
    torch.set_num_threads(1)
    stats, grads, backwards = _train(_learner(model_dir, rank, 2, port, BUDGET, zero_stage), shards[rank])
    torch.save({"stats": stats, "grads": grads, "backwards": backwards}, f"{out}/rank{rank}.pt")


def _assert_same(stats, grads, ref_stats, ref_grads):
    for key in (*LOSSES, "policy/clip_frac", "policy/approx_kl", "policy/entropy", "policy/ratio_max",
                "critic/values_mean", "policy/grad_norm"):
        assert stats[key] == pytest.approx(ref_stats[key], rel=1e-5, abs=1e-7), key
    assert grads.keys() == ref_grads.keys()
    assert any(g.abs().sum() > 0 for g in grads.values())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def fixed_one_rank(model_dir):
    return _train(_learner(model_dir, 0, 1, free_port(), 0), _batch())


def test_one_rank_budget_equals_fixed_micro_batches(model_dir, fixed_one_rank):
    ref_stats, ref_grads, ref_backwards = fixed_one_rank
    stats, grads, backwards = _train(_learner(model_dir, 0, 1, free_port(), BUDGET), _batch())
    _assert_same(stats, grads, ref_stats, ref_grads)
    assert ref_backwards == 3 and backwards > ref_backwards  # 12 rows by 4; budget groups are smaller
    assert stats["train/padding_frac"] < ref_stats["train/padding_frac"]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_uneven_ranks_with_a_budget_equal_one_rank(model_dir, fixed_one_rank, tmp_path, zero_stage):
    batch = _batch()
    shards = [batch.select(slice(0, 8)), batch.select(slice(8, 12))]
    ctx = mp.start_processes(
        _two_ranks, args=(free_port(), model_dir, shards, zero_stage, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:  # a rank waiting on a collective the other never runs
            for process in ctx.processes:
                process.kill()
            pytest.fail("the two learner ranks did not finish in 300 s (unpaired collectives?)")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # rank 0 forms 5 groups; rank 1 splits its 2 groups into 4 single rows and adds a stand-in pass
    assert ranks[0]["backwards"] == ranks[1]["backwards"] == 5
    # statistics are reduced over the ranks (the driver sums the per-rank counts itself)
    per_rank = ("logprob_abs_diff_sum", "logprob_abs_diff_max", "num_tokens")
    assert [{k: v for k, v in r["stats"].items() if k not in per_rank} for r in ranks] == [
        {k: v for k, v in ranks[0]["stats"].items() if k not in per_rank}
    ] * 2
    ref_stats, ref_grads, _ = fixed_one_rank
    for rank in ranks:
        _assert_same(rank["stats"], rank["grads"], ref_stats, ref_grads)


def test_one_update_takes_the_proximal_log_probs_from_its_own_pass(model_dir):
    """A step of one optimizer update (one epoch, one mini-batch) skips the separate proximal pass:
    its statistics, importance weights and gradients equal those of a step given the proximal
    log-probs from that pass (as the driver gives them under async_steps), with one forward fewer."""
    tis = ("algorithm.is_correction=tis", "algorithm.is_cap=1.5")
    runs = []
    for given in (False, True):
        learner = _learner(model_dir, 0, 1, free_port(), 0, extra=tis)
        forwards = []
        learner.policy.module.register_forward_hook(lambda *_: forwards.append(1))
        shard = _batch()
        if given:
            shard.old_logprobs = learner.logprobs(shard)
            forwards.clear()
        grads: dict[str, torch.Tensor] = {}
        step = learner.policy.step

        def capture(*args, step=step, learner=learner, **kwargs):
            from deepspeed.utils import safe_get_full_grad

            for name, param in learner.policy.module.named_parameters():
                grads[name] = safe_get_full_grad(param).detach().clone()
            return step(*args, **kwargs)

        learner.policy.step = capture
        runs.append((learner.train(shard, kl_coef=0.1), grads, len(forwards)))
    (own, own_grads, own_forwards), (given, given_grads, given_forwards) = runs
    assert own_forwards == given_forwards == 3  # 12 rows in micro-batches of 4; no extra pass
    _assert_same(own.means, own_grads, given.means, given_grads)
    assert own.importance.clipped > 0 and own.importance.tokens == given.importance.tokens
    for key in ("weight_sum", "clipped", "weight_max"):
        assert getattr(own.importance, key) == pytest.approx(getattr(given.importance, key), rel=1e-5), key
    assert own.logprob_abs_diff_sum == pytest.approx(given.logprob_abs_diff_sum, rel=1e-5)
    assert own.logprob_abs_diff_max == pytest.approx(given.logprob_abs_diff_max, rel=1e-5)
