"""Colocation's sleep/wake calls, without GPUs: which calls the driver makes, in which order, and
what the engine does with them. (Real vLLM sleep frees GPU memory only on a GPU; on CPU it is a
no-op, so the memory effect awaits a GPU machine.)"""

from types import SimpleNamespace

import pytest
import torch

import rlhf_dist.driver.loop as driver_module
from rlhf_dist.config import load_config
from rlhf_dist.driver.batch_producer import RolloutPipeline
from rlhf_dist.driver.loop import Driver
from rlhf_dist.rollout.vllm_engine import VLLMEngine

COLOCATED = ["placement.colocate=true", "rollout.num_workers=2",
             "placement.learner.num_gpus=0.5", "placement.rollout.num_gpus=0.5"]


class Generator:
    """A stand-in actor handle: each method's ``.remote()`` records the call."""

    def __init__(self, name, calls):
        self.sleep = SimpleNamespace(remote=lambda: calls.append(f"{name}.sleep"))
        self.wake_up = SimpleNamespace(remote=lambda: calls.append(f"{name}.wake_up"))


def fake_driver(overrides, calls, monkeypatch):
    monkeypatch.setattr(driver_module, "gather", lambda refs, role: list(refs))
    monkeypatch.setattr(driver_module, "compute_advantages", lambda *a: calls.append("advantages") or {"kl/mean": 0.0})
    d = Driver.__new__(Driver)
    d.cfg = load_config(None, overrides)
    d.roles = SimpleNamespace(rollout=[Generator("g0", calls), Generator("g1", calls)])
    d.timings = {}
    d.evaluator = SimpleNamespace(due=lambda step: False)
    d.state = SimpleNamespace(sampler=SimpleNamespace(next_batch=lambda n: list(range(n)), consumed=0),
                              kl_ctl=SimpleNamespace(value=0.1, update=lambda *a: None), policy_version=0)
    d.recovering = lambda work: work()
    d.learner_call = lambda work, step: work()
    d.rollouts = RolloutPipeline(d.cfg, d.roles, [], 0, d.state.sampler, version=lambda: 0,
                                 after_generate=lambda: d.set_generators_awake(False))
    batch = SimpleNamespace(exp=SimpleNamespace(batch_size=4, policy_versions=torch.zeros(4, dtype=torch.long)))
    d.rollouts._generate = lambda step, round_, indices: calls.append("generate") or []
    d.rollouts._score = lambda samples: calls.append("score")
    d.rollouts._assemble = lambda rounds, groups: (batch, {}, 0)
    d.rollouts._reference = lambda exp: calls.append("reference")
    d.values = lambda exp: calls.append("values")
    d.train = lambda exp: calls.append("train") or {}
    d.sync_weights = lambda: calls.append("sync") or {}
    d.count_nonfinite = lambda step, stats: None
    d.step_metrics = lambda *a: {"reward/mean": 0.0, "kl/mean": 0.0}
    d.finish_step = lambda *a: None
    return d


def test_colocated_generators_sleep_after_generating_and_wake_before_the_sync(monkeypatch):
    calls = []
    fake_driver(COLOCATED, calls, monkeypatch).step(0)
    # Asleep once every sampling round is generated and scored (dynamic sampling may need more).
    assert calls == ["generate", "score", "g0.sleep", "g1.sleep", "reference", "values", "advantages", "train",
                     "g0.wake_up", "g1.wake_up", "sync"]


def test_without_colocation_no_sleep_or_wake_is_sent(monkeypatch):
    calls = []
    fake_driver([], calls, monkeypatch).step(0)
    assert not [c for c in calls if "sleep" in c or "wake" in c]


class FakeLLM:
    def __init__(self):
        self.calls = []

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))


@pytest.mark.parametrize("sleep_mode, expected", [(False, []), (True, [("sleep", 1), ("wake_up",)])])
def test_engine_sleeps_at_level_1_only_in_sleep_mode_and_only_once(sleep_mode, expected):
    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM start: only the sleep bookkeeping is under test
    engine.llm, engine.sleep_mode, engine.asleep = FakeLLM(), sleep_mode, False
    engine.sleep()
    engine.sleep()
    engine.wake_up()
    engine.wake_up()
    assert engine.llm.calls == expected
