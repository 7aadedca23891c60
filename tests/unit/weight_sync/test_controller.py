"""Weight-sync pieces that need no second process: bucket planning, checksums, verification."""

import pytest
import torch

from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.rollout.hf_engine import _processed_logprobs
from rlhf_dist.rollout.requests import request_seed
from rlhf_dist.weight_sync.buckets import TensorMeta, checksum, flatten_bucket, plan_buckets, unflatten_bucket
from rlhf_dist.weight_sync.controller import WeightSyncError, verify_checksums

F32 = "torch.float32"


def test_buckets_respect_size_and_dtype_and_keep_order():
    metas = [TensorMeta("a", (256,), F32), TensorMeta("b", (256,), F32), TensorMeta("c", (300,), F32),
             TensorMeta("d", (4,), "torch.bfloat16"), TensorMeta("e", (4,), F32)]
    buckets = plan_buckets(metas, bucket_bytes=2048)
    assert [[t.name for t in b.tensors] for b in buckets] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert buckets[0].nbytes == 2048 and buckets[2].dtype == torch.bfloat16


def test_flatten_unflatten_round_trip():
    tensors = [torch.randn(3, 4), torch.randn(5)]
    bucket = plan_buckets([TensorMeta("x", (3, 4), F32), TensorMeta("y", (5,), F32)])[0]
    out = dict(unflatten_bucket(flatten_bucket(tensors), bucket))
    assert torch.equal(out["x"], tensors[0]) and torch.equal(out["y"], tensors[1])


def test_checksum_sees_any_change_and_any_swap():
    flat = torch.randn(1000)
    base = checksum(flat)
    assert checksum(flat.clone()) == base
    nudged = flat.clone()
    nudged[500] = torch.nextafter(nudged[500], torch.tensor(1e9))  # one ulp
    assert checksum(nudged) != base
    swapped = flat.clone()
    swapped[[3, 7]] = swapped[[7, 3]]
    assert checksum(swapped) != base
    assert checksum(flat.to(torch.bfloat16)) == checksum(flat.to(torch.bfloat16).clone())


def test_verify_checksums_names_the_generator():
    verify_checksums([1, 2], {"rollout-0": [1, 2], "rollout-1": [1, 2]}, version=3)
    with pytest.raises(WeightSyncError, match="rollout-1: checksums differ in buckets \\[1\\]"):
        verify_checksums([1, 2], {"rollout-0": [1, 2], "rollout-1": [1, 5]}, version=3)
    with pytest.raises(WeightSyncError, match="1 buckets received, 2 sent"):
        verify_checksums([1, 2], {"rollout-0": [1]}, version=3)


def test_request_seed_is_fixed_by_run_step_prompt_sample():
    assert request_seed(0, 1, 2, 3) == request_seed(0, 1, 2, 3)
    assert len({request_seed(0, s, p, k) for s in range(4) for p in range(4) for k in range(4)}) == 64


def test_processed_logprobs_temperature_and_truncation():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    plain = _processed_logprobs(logits, SamplingConfig(temperature=2.0))
    torch.testing.assert_close(plain, torch.log_softmax(logits / 2.0, -1))
    top2 = _processed_logprobs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.isinf(top2[0, 2:]).all() and top2[0, :2].exp().sum().item() == pytest.approx(1.0)
    nucleus = _processed_logprobs(logits, SamplingConfig(temperature=1.0, top_p=0.5))
    assert torch.isfinite(nucleus[0, 0]) and torch.isinf(nucleus[0, 1:]).all()  # p(top) = 0.64 >= 0.5


def test_probe_check_passes_within_tolerance_and_names_the_gap_past_it():
    from rlhf_dist.weight_sync.controller import verify_probe

    learner = [-1.0, -2.0, -0.5]
    assert verify_probe(learner, [[-1.0, -2.00005, -0.5], learner], 1e-4, 3) == pytest.approx(5e-5, abs=1e-6)
    with pytest.raises(WeightSyncError, match=r"after sync 3, .* differ .* by 1\.00e-02"):
        verify_probe(learner, [learner, [-1.01, -2.0, -0.5]], 1e-4, 3)


def test_greedy_temperature_zero_leaves_the_logits_unscaled():
    logits = torch.randn(3, 11)
    got = _processed_logprobs(logits, SamplingConfig(temperature=0.0))
    torch.testing.assert_close(got, torch.log_softmax(logits, -1))


def test_prefill_batches_respect_sequence_and_token_budgets_and_keep_order():
    from rlhf_dist.rollout.requests import Request, prefill_batches

    reqs = [Request(i, 0, [1] * n, 0) for i, n in enumerate([3, 3, 3, 9, 1, 1, 1])]
    batches = prefill_batches(reqs, max_seqs=2, max_tokens=6)
    assert [[r.prompt_index for r in b] for b in batches] == [[0, 1], [2], [3], [4, 5], [6]]
    assert [r for b in batches for r in b] == reqs
