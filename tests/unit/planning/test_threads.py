"""Threads per actor: a node's cores shared by the actors that compute at the same time."""

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.errors import UserError
from rlhf_dist.planning.placement import NodeResources, plan_placement, plan_world
from rlhf_dist.planning.threads import MAX_THREADS_ENV, thread_cap


@pytest.fixture(autouse=True)
def no_cap(monkeypatch):
    monkeypatch.delenv(MAX_THREADS_ENV, raising=False)  # the suite's conftest caps every actor at 1


def plan(*overrides, nodes=(NodeResources("n0", 2, 0, "local"),)):
    return plan_placement(load_config(None, list(overrides)), list(nodes))


def test_on_policy_phases_that_run_alone_use_the_node():
    # The default: two learner ranks train at once (a core each); the engine and the scorer run alone.
    threads = plan().threads
    assert threads == {"learner-0": 1, "learner-1": 1, "rollout-0": 2, "reward-0": 2}
    assert plan("learner.num_workers=1").threads["learner-0"] == 2
    table = plan().table()
    assert "rollout-0     cpu" in table and "2 threads" in table and "learner-0" in table


def test_async_roles_split_the_cores_with_the_learners():
    # The engine generates while both ranks train: three busy processes on 2 cores, one thread each.
    assert set(plan("rollout.async_steps=1").threads.values()) == {1}
    eight = plan("rollout.async_steps=1", "learner.num_workers=1", nodes=[NodeResources("n0", 8, 0)]).threads
    assert eight == {"learner-0": 4, "rollout-0": 4, "reward-0": 4}


def test_separate_reference_workers_count_in_their_own_phase():
    threads = plan("placement.reference.colocate_with=null", "reference.num_workers=2",
                   nodes=[NodeResources("n0", 4, 0)]).threads
    assert threads["reference-0"] == threads["reference-1"] == 2 and threads["rollout-0"] == 4


def test_each_node_divides_its_own_cores():
    gpu = ("placement.learner.num_gpus=1", "placement.rollout.num_gpus=1", "learner.num_workers=4")
    nodes = [NodeResources("a", 16, 4, "a"), NodeResources("b", 8, 2, "b")]
    threads = plan(*gpu, nodes=nodes).threads
    # PACK puts the 4 learner ranks on a (16 cores: 4 each), the engine on b with the reward scorer.
    assert [threads[f"learner-{i}"] for i in range(4)] == [4, 4, 4, 4]
    assert threads["rollout-0"] == 8


def test_a_stage_world_shares_its_node():
    from rlhf_dist.config.placement import RoleResources

    world = plan_world(2, RoleResources(num_cpus=1), "PACK", [NodeResources("n0", 6, 0)])
    assert world.threads == {"learner-0": 3, "learner-1": 3}


def test_the_cap_bounds_every_actor_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setenv(MAX_THREADS_ENV, "1")
    assert set(plan("learner.num_workers=1").threads.values()) == {1}
    monkeypatch.setenv(MAX_THREADS_ENV, "two")
    with pytest.raises(UserError, match="RLHF_DIST_MAX_THREADS='two'.*positive integer"):
        thread_cap()
