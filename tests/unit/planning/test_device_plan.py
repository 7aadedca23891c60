"""Explicit devices: which device each actor of a declared-GPU plan computes on, reference and reward
workers sharing the learners' bundles (`colocate_with: learner`), and the environment every actor gets."""

import pytest

from rlhf_dist.config import ConfigError, load_config
from rlhf_dist.planning.placement import COLOCATED, NodeResources, PlacementError, plan_placement


def gpu_nodes():
    return [NodeResources("id-head", 4, 0, "head"), NodeResources("id-a", 16, 4, "a")]


# Reference actors of their own (the tiny default keeps the reference in the learner ranks).
OWN_REFERENCE = "placement.reference.colocate_with=null"


def plan(*overrides, nodes=None):
    return plan_placement(load_config(None, [OWN_REFERENCE, *overrides]), nodes or gpu_nodes())


COLOCATE_ALL = ("placement.colocate=true", "rollout.num_workers=2", "reference.num_workers=2",
                "placement.learner.num_gpus=0.4", "placement.rollout.num_gpus=0.4",
                "placement.reference.num_gpus=0.2", "placement.reference.colocate_with=learner")


def test_each_actor_of_a_declared_gpu_plan_gets_its_bundles_gpus_or_the_cpu():
    p = plan("placement.learner.num_gpus=1", "placement.rollout.num_gpus=0.5", "rollout.num_workers=2",
             "rollout.tensor_parallel_size=1")
    devices = {s.name: p.device(s) for s in p.slots}
    assert devices["learner-1"] == "cuda:0 (1 GPU; bundle 1 of learner on node a)"
    assert devices["rollout-0"] == "cuda:0 (0.5 of one GPU; bundle 0 of rollout on node a)"
    # Roles left at num_gpus=0 see no GPU at all, rather than every GPU of their node.
    assert devices["reference-0"] == devices["reward-0"] == 'cpu (CUDA_VISIBLE_DEVICES="")'
    tp = plan("rollout.tensor_parallel_size=2", "placement.rollout.num_gpus=2")
    assert tp.device(tp.slot("rollout", 0)) == "cuda:0-1 (2 GPUs; bundle 0 of rollout on node a)"
    table = p.table()
    assert "devices\n  learner-0     cuda:0 (1 GPU; bundle 0 of learner on node a)" in table
    assert '  reward-0      cpu (CUDA_VISIBLE_DEVICES="")' in table


def test_reference_colocated_with_the_learner_shares_each_ranks_bundle_and_gpu():
    p = plan(*COLOCATE_ALL)
    group = p.group(COLOCATED)
    assert group.roles == ("learner", "rollout", "reference")
    assert group.bundles == [{"CPU": 1.25, "GPU": 1.0}] * 2  # 0.5 + 0.5 + 0.25 CPUs, one GPU shared
    assert [g.name for g in p.groups] == [COLOCATED, "reward"]  # no reference group of its own
    for i in range(2):
        ref = p.slot("reference", i)
        assert (ref.group, ref.bundle, ref.num_gpus) == (COLOCATED, i, 0.2)
    assert p.device(p.slot("reference", 1)) == (
        "cuda:0 (0.2 of one GPU, shared with learner-1 and rollout-1; bundle 1 of rollout+learner on node a)")
    assert "colocated: learner, rollout and reference share each bundle" in p.table()


def test_fewer_guests_than_learner_ranks_join_the_first_bundles():
    p = plan("placement.learner.num_gpus=0.5", "placement.reward.num_gpus=0.5", "placement.reward.colocate_with=learner")
    assert [g.name for g in p.groups] == ["learner", "rollout", "reference"]
    assert p.group("learner").bundles == [{"CPU": 0.75, "GPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}]
    assert (p.slot("reward", 0).group, p.slot("reward", 0).bundle) == ("learner", 0)
    assert "learner  (PACK, 2 bundles, colocated: learner and reward share each bundle)" in p.table()
    with pytest.raises(PlacementError, match=r"needs 2 bundles of up to \{CPU: 0.75, GPU: 1\}"):
        plan("placement.learner.num_gpus=0.5", "placement.reward.num_gpus=0.5", "placement.reward.colocate_with=learner",
             nodes=[NodeResources("id-a", 16, 1, "a")])


def problems(*overrides):
    with pytest.raises(ConfigError) as info:
        load_config(None, [OWN_REFERENCE, *overrides])
    return "\n".join(info.value.problems)


def test_colocate_with_is_validated():
    assert "colocate_with=learner shares the learners' GPUs, but placement.learner.num_gpus=0 (a CPU run)" in problems(
        "placement.reference.colocate_with=learner")
    assert "needs placement.reward.num_gpus > 0, its share of each learner rank's GPU" in problems(
        "placement.learner.num_gpus=0.5", "placement.reward.colocate_with=learner")
    assert "reference.num_workers=3 must be <= learner.num_workers=2" in problems(
        "placement.learner.num_gpus=0.5", "placement.reference.num_gpus=0.5", "reference.num_workers=3",
        "placement.reference.colocate_with=learner")
    too_much = problems(*COLOCATE_ALL[:-2], "placement.reference.num_gpus=0.3", "placement.reference.colocate_with=learner")
    assert ("placement.learner.num_gpus + placement.rollout.num_gpus + placement.reference.num_gpus = 0.4 + 0.4 + 0.3 "
            "= 1.1 shares of one GPU, more than 1") in too_much
    assert "placement.rollout.colocate_with: unknown key" in problems("placement.rollout.colocate_with=learner")
    load_config(None, list(COLOCATE_ALL))  # shares summing to 1 are fine


def test_every_actor_hides_unassigned_gpus_and_shares_one_nccl_setting(monkeypatch):
    from actors.shell import actor_env

    monkeypatch.setenv("NCCL_CUMEM_ENABLE", "1")  # a user's setting cannot split the group's processes
    env = actor_env()
    assert env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1" and env["NCCL_CUMEM_ENABLE"] == "0"
    assert "DS_ACCELERATOR" not in env  # set per actor, from the devices it sees (a CPU head may drive GPUs)


def test_an_actor_without_a_gpu_uses_deepspeeds_cpu_accelerator(monkeypatch):
    import torch

    from actors.shell import use_assigned_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert use_assigned_devices() is False
    import os

    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert use_assigned_devices() is True and "DS_ACCELERATOR" not in os.environ
