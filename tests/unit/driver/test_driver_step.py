"""The real `Driver` stepping over in-process fake roles (tests/unit/driver/fake_roles.py): which phase
calls which role, in which order, and what the step's record says. No Ray, no engine."""

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.driver.loop import Driver
from rlhf_dist.metrics.logger import MetricsLogger
from tests.unit.driver.fake_roles import fake_prompts, fake_roles

SMALL = ["rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "learner.mini_batch_size=8",
         "learner.micro_batch_size=2", "rollout.sampling.max_new_tokens=4"]
COLOCATED = ["placement.colocate=true", "rollout.num_workers=2",
             "placement.learner.num_gpus=0.5", "placement.rollout.num_gpus=0.5"]


def make_driver(overrides, calls, tmp_path, generators=2):
    cfg = load_config(None, [*SMALL, *overrides])
    metrics = MetricsLogger(tmp_path / "run", tensorboard=False, progress=False)
    return Driver(cfg, fake_roles(calls, generators=generators), fake_prompts(16), pad_token_id=0, probe_ids=[1, 2],
                  metrics=metrics, sync_address=("127.0.0.1", 0))


def test_one_step_calls_each_role_once_in_the_order_of_the_phases(tmp_path):
    calls = []
    record = make_driver([], calls, tmp_path).step(0)
    # generate and score on every generator/scorer, the reference, then the learners: train on both
    # ranks together, then the sync (each rank broadcasts, each generator receives).
    assert calls == ["generate", "generate", "score", "reference", "l0.train", "l1.train",
                     "l0.broadcast", "l1.broadcast", "g0.receive", "g1.receive"]
    assert record["step"] == 0 and record["policy_version"] == 0
    assert record["sync/verified"] == 1.0 and record["sync/bytes"] == 1024.0
    # the learners' TrainStats reduced over ranks: means averaged, the mismatch per token over both ranks
    assert record["policy/loss"] == 4.0  # each rank trained on 4 of the 8 sequences
    assert record["rollout/logprob_abs_diff"] == pytest.approx(0.01)
    # the fake rewards are the sample index: 0 and 1 in every group of two
    assert record["reward/mean"] == 0.5 and record["reward/gold_mean"] == 0.25


def test_ppo_asks_the_learners_for_values_before_training(tmp_path):
    calls = []
    make_driver(["algorithm.name=ppo"], calls, tmp_path).step(0)
    learner_calls = [c for c in calls if c.startswith("l")]
    assert learner_calls[:4] == ["l0.values", "l1.values", "l0.train", "l1.train"]


def test_colocated_generators_sleep_after_generating_and_wake_before_the_sync(tmp_path):
    calls = []
    make_driver(COLOCATED, calls, tmp_path).step(0)
    # Asleep once every sampling round is generated and scored (dynamic sampling may need more).
    assert calls == ["generate", "generate", "score", "g0.sleep", "g1.sleep", "reference", "l0.train", "l1.train",
                     "g0.wake_up", "g1.wake_up", "l0.broadcast", "l1.broadcast", "g0.receive", "g1.receive"]


def test_without_colocation_no_sleep_or_wake_is_sent(tmp_path):
    calls = []
    make_driver([], calls, tmp_path).step(0)
    assert not [c for c in calls if "sleep" in c or "wake" in c]


def test_each_step_syncs_a_new_policy_version(tmp_path):
    calls = []
    driver = make_driver([], calls, tmp_path)
    records = [driver.step(step) for step in range(3)]
    assert [r["policy_version"] for r in records] == [0, 1, 2]
    assert driver.policy_version == 3


def test_a_failed_checkpoint_write_names_the_last_complete_one_and_the_resume_command(tmp_path):
    from rlhf_dist.driver.remote_calls import RunFailed

    driver = make_driver(["steps=3", "checkpoint.every=1"], [], tmp_path)
    driver.run_dir = tmp_path / "run"

    def save(steps_done):
        if steps_done == 2:
            raise OSError(28, "No space left on device")
        path = driver.run_dir / "checkpoints" / f"step-{steps_done}"
        path.mkdir(parents=True)
        return path

    driver.save_checkpoint = save
    with pytest.raises(RunFailed) as info:
        driver.run_steps(0)
    assert str(info.value) == (
        "writing the checkpoint of step 2 failed (OSError: [Errno 28] No space left on device); it is incomplete and "
        f"will not be resumed from. The last complete checkpoint is {driver.run_dir}/checkpoints/step-1; continue "
        f"with: rlhf-dist train --resume {driver.run_dir}")


def test_a_reference_held_by_the_learner_ranks_is_asked_there_one_shard_each(tmp_path):
    calls = []
    cfg = load_config(None, SMALL)
    metrics = MetricsLogger(tmp_path / "run", tensorboard=False, progress=False)
    driver = Driver(cfg, fake_roles(calls, reference_in_learners=True), fake_prompts(16), pad_token_id=0,
                    probe_ids=[1, 2], metrics=metrics, sync_address=("127.0.0.1", 0))
    record = driver.step(0)
    assert calls[:6] == ["generate", "generate", "score", "l0.reference", "l1.reference", "l0.train"]
    assert "reference" not in calls and record["step"] == 0
