"""The placement planner on hand-built clusters: no Ray, milliseconds per test."""

import pytest

from rlhf_dist.config import ConfigError, load_config
from rlhf_dist.errors import UserError
from rlhf_dist.planning.placement import COLOCATED, NodeResources, PlacementError, plan_placement


def cfg(*overrides):
    return load_config(None, list(overrides))


GPU_RUN = ("placement.learner.num_gpus=1", "placement.learner.num_cpus=1",
           "placement.rollout.num_gpus=1", "placement.rollout.num_cpus=1")


def cluster():
    """A CPU-only head, a 4-GPU node 'a' and a 2-GPU node 'b'."""
    return [NodeResources("id-head", 4, 0, "head"), NodeResources("id-a", 16, 4, "a"), NodeResources("id-b", 16, 2, "b")]


def test_default_cpu_run_packs_every_role_on_one_node():
    # The default's learner ranks hold the reference (placement.reference.colocate_with=learner_process).
    plan = plan_placement(cfg(), [NodeResources("n0", 2, 0, "local")])
    assert [g.name for g in plan.groups] == ["learner", "rollout", "reward"]
    assert not plan.role_slots("reference") and "reference     in every learner rank" in plan.table()
    plan = plan_placement(cfg("placement.reference.colocate_with=null"), [NodeResources("n0", 2, 0, "local")])
    assert [g.name for g in plan.groups] == ["learner", "rollout", "reference", "reward"]
    assert "in every learner rank" not in plan.table()
    assert plan.group("learner").bundles == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert plan.group("reward").bundles == [{"CPU": 0.25}]
    assert {s.node_id for s in plan.slots} == {"n0"}
    assert [s.name for s in plan.role_slots("learner")] == ["learner-0", "learner-1"]


def test_pack_keeps_a_group_on_one_node_and_spread_deals_it_out():
    pack = plan_placement(cfg(*GPU_RUN, "learner.num_workers=2"), cluster())
    assert pack.group("learner").nodes == ["id-a", "id-a"]
    assert pack.group("rollout").nodes == ["id-a"]  # a still has 2 GPUs after the learners
    spread = plan_placement(cfg(*GPU_RUN, "learner.num_workers=2", "placement.strategy=SPREAD"), cluster())
    assert spread.group("learner").nodes == ["id-a", "id-b"]
    assert spread.slot("learner", 1).node_id == "id-b" and spread.slot("learner", 1).bundle == 1


def test_pack_fills_greedily_when_no_node_holds_the_group():
    plan = plan_placement(cfg("placement.learner.num_gpus=1", "learner.num_workers=6", "learner.mini_batch_size=24",
                              "learner.micro_batch_size=4", "rollout.prompts_per_step=6"), cluster())
    assert plan.group("learner").nodes == ["id-a"] * 4 + ["id-b"] * 2


def test_strict_pack_fails_when_no_node_holds_the_group():
    with pytest.raises(PlacementError) as info:
        plan_placement(cfg(*GPU_RUN, "learner.num_workers=6", "learner.mini_batch_size=24",
                           "learner.micro_batch_size=4", "rollout.prompts_per_step=6", "placement.strategy=STRICT_PACK"),
                       cluster())
    text = str(info.value)
    assert "STRICT_PACK puts all bundles on one node" in text and "placement.strategy=PACK" in text
    assert isinstance(info.value, UserError)


def test_strict_spread_needs_a_node_per_bundle():
    plan = plan_placement(cfg(*GPU_RUN, "learner.num_workers=2", "placement.strategy=STRICT_SPREAD"), cluster())
    assert sorted(plan.group("learner").nodes) == ["id-a", "id-b"]
    with pytest.raises(PlacementError, match="every bundle on a different node"):
        plan_placement(cfg("placement.strategy=STRICT_SPREAD"), [NodeResources("n0", 8, 0, "local")])


def test_too_few_gpus_says_what_is_missing_and_the_fix():
    with pytest.raises(PlacementError) as info:
        plan_placement(cfg(*GPU_RUN, "learner.num_workers=2"), [NodeResources("h", 8, 1, "head")])
    text = str(info.value)
    assert "the learner needs 2 bundles of {CPU: 1, GPU: 1} (PACK) = 2 GPU" in text
    assert "the cluster has 1 GPU in total (node head: 8 CPU, 1 GPU)" in text
    assert "lower learner.num_workers, placement.learner.num_gpus" in text and "add GPU nodes" in text


def test_gpus_taken_by_an_earlier_group_are_named():
    with pytest.raises(PlacementError) as info:
        plan_placement(cfg(*GPU_RUN, "learner.num_workers=2"), [NodeResources("h", 8, 2, "head")])
    assert "the rollout needs 1 bundle of {CPU: 1, GPU: 1}" in str(info.value)
    assert "2 of them planned for the learner first" in str(info.value)


def test_too_few_cpus():
    with pytest.raises(PlacementError) as info:
        plan_placement(cfg(), [NodeResources("n0", 1, 0, "local")])
    text = str(info.value)
    assert "CPU but the cluster has 1 CPU in total" in text and "placement.rollout.num_cpus" in text


def test_a_bundle_larger_than_any_node():
    # 3 GPUs in all, but no node has 2 for one tensor-parallel engine.
    nodes = [NodeResources("x", 8, 1, "x"), NodeResources("y", 8, 1, "y"), NodeResources("z", 8, 1, "z")]
    with pytest.raises(PlacementError) as info:
        plan_placement(cfg("rollout.tensor_parallel_size=2", "placement.rollout.num_gpus=2"), nodes)
    text = str(info.value)
    assert "no node has a whole bundle free" in text and "a bundle must fit on one node" in text
    assert "rollout.tensor_parallel_size" in text


def test_tensor_parallel_engine_gets_one_bundle_with_all_its_gpus():
    plan = plan_placement(cfg("rollout.num_workers=2", "rollout.tensor_parallel_size=2", "placement.rollout.num_gpus=2"),
                          cluster())
    assert plan.group("rollout").bundles == [{"CPU": 0.5, "GPU": 2}, {"CPU": 0.5, "GPU": 2}]
    assert plan.group("rollout").nodes == ["id-a", "id-a"]
    assert plan.slot("rollout", 1).num_gpus == 2


def test_colocation_shares_each_gpu_between_a_learner_rank_and_an_engine():
    plan = plan_placement(cfg("placement.colocate=true", "rollout.num_workers=2", "placement.learner.num_gpus=0.5",
                              "placement.rollout.num_gpus=0.5"), cluster())
    group = plan.group(COLOCATED)
    assert group.colocated and group.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert [g.name for g in plan.groups] == [COLOCATED, "reward"]  # the learner ranks hold the reference
    for i in range(2):
        learner, engine = plan.slot("learner", i), plan.slot("rollout", i)
        assert (learner.group, learner.bundle, learner.num_gpus) == (COLOCATED, i, 0.5)
        assert (engine.group, engine.bundle, engine.num_gpus) == (COLOCATED, i, 0.5)
    assert "colocated: learner and rollout share each bundle" in plan.table()


def test_colocation_counts_are_validated():
    base = ("placement.colocate=true", "placement.learner.num_gpus=0.5", "placement.rollout.num_gpus=0.5")
    with pytest.raises(ConfigError) as info:
        load_config(None, [*base, "rollout.num_workers=1"])
    assert "learner.num_workers (2) must equal rollout.num_workers x rollout.tensor_parallel_size (1 x 1)" in "\n".join(
        info.value.problems)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["placement.colocate=true", "rollout.num_workers=2", "placement.learner.num_gpus=1",
                           "placement.rollout.num_gpus=0.5"])
    assert "= 1.5 shares of one GPU, more than 1" in "\n".join(info.value.problems)
    with pytest.raises(ConfigError) as info:
        load_config(None, [*base, "rollout.num_workers=2", "rollout.tensor_parallel_size=2"])
    assert "colocate=true needs rollout.tensor_parallel_size=1" in "\n".join(info.value.problems)


def test_the_same_cluster_in_any_order_gets_the_same_plan():
    config = cfg(*GPU_RUN, "learner.num_workers=2", "placement.strategy=SPREAD")
    first = plan_placement(config, cluster())
    again = plan_placement(config, list(reversed(cluster())))
    assert first.slots == again.slots and first.table() == again.table()


def test_table_names_every_bundle_node_and_actor():
    table = plan_placement(cfg(*GPU_RUN), cluster()).table()
    assert "learner  (PACK, 2 bundles, not colocated)" in table
    assert "bundle 1  {CPU: 1, GPU: 1}" in table and "learner-1 (CPU 1, GPU 1)" in table
    assert "node a" in table and "reward-0" in table


def test_plan_command_prints_the_table_or_exits_2(capsys):
    from launch.cli.main import main

    assert main(["plan", "placement.learner.num_gpus=1", "--nodes", "head:4:0,gpu1:16:2"]) == 0
    out = capsys.readouterr().out
    assert "placement for the nodes given" in out and "learner-1 (CPU 0.5, GPU 1)" in out and "node gpu1" in out
    assert main(["plan", "placement.learner.num_gpus=1", "--nodes", "head:8:1"]) == 2
    err = capsys.readouterr().err
    assert "placement impossible: the learner needs 2 bundles" in err and "Traceback" not in err
    assert main(["plan", "--nodes", "head:8"]) == 2
    assert "write NAME:CPUS:GPUS per node" in capsys.readouterr().err
