"""Eval maths and bookkeeping: pass@k against a brute-force count, grading, the held-out split."""

import itertools

import numpy as np
import pytest

from rlhf_dist.config import load_config
from rlhf_dist.config.load import ConfigError
from rlhf_dist.data import Prompt
from rlhf_dist.driver.evaluation import eval_metrics, pass_at_k, split_holdout
from rlhf_dist.errors import UserError


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_pass_at_k_equals_the_brute_force_count(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_worked():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_eval_metrics_on_binary_grades_and_nothing_on_real_valued_ones():
    graded = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = eval_metrics(graded, 4)
    assert got["eval/pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert got["eval/pass@k"] == pytest.approx((1 + 0 + 1) / 3)
    assert eval_metrics(np.array([[0.5, 1.0]]), 2) == {}


def _prompts(n):
    return [Prompt(index=i, text=f"p{i}", ids=[i]) for i in range(n)]


def test_holdout_is_disjoint_reindexed_and_deterministic():
    train, held = split_holdout(_prompts(20), 5, seed=3)
    assert len(train) == 15 and len(held) == 5
    assert not {p.text for p in train} & {p.text for p in held}
    assert [p.index for p in train] == list(range(15)) and [p.index for p in held] == list(range(5))
    assert split_holdout(_prompts(20), 5, seed=3) == (train, held)
    with pytest.raises(UserError, match="would hold out all 4"):
        split_holdout(_prompts(4), 4, seed=0)


def test_eval_config_problems_are_named():
    with pytest.raises(ConfigError, match="no eval prompts"):
        load_config(None, ["eval.every=5"])
    with pytest.raises(ConfigError, match="choose one source"):
        load_config(None, ["eval.every=5", "eval.holdout=8", "eval.prompts=x.jsonl"])
    with pytest.raises(ConfigError, match="temperature=0"):
        load_config(None, ["rollout.sampling.temperature=0"])
    assert load_config(None, ["eval.every=5", "eval.holdout=8"]).eval.holdout == 8
