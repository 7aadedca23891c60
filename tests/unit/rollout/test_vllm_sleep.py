"""Colocation's sleep/wake in the engine, without GPUs: what the engine does with the driver's calls
(which calls the driver makes, and when: tests/unit/driver/test_driver_step.py). Real vLLM sleep
frees GPU memory only on a GPU; on CPU it is a no-op, so the memory effect awaits a GPU machine."""

import pytest

from rlhf_dist.rollout.vllm_engine import VLLMEngine


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
