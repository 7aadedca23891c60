"""Multi-node placement on one machine: a `ray.cluster_utils.Cluster` of three raylets.

The head has 1 CPU and no GPU; node "learners" declares 2 GPUs, node "generators" 1 GPU. The GPUs
are declared, not real: every actor still computes on CPU (backends follow torch.cuda), but Ray must
put each actor where the plan says, and the plan must send the learners to the 2-GPU node and the
generator to the 1-GPU node.
"""


import pytest
import ray

from actors.shell import actor_env
from launch.cluster import live_nodes, state_api_nodes
from launch.roles import NAMESPACE, build_roles, stop_roles
from launch.run import train
from rlhf_dist.config import load_config
from rlhf_dist.planning.placement import plan_placement
from tests.integration.conftest import simulated_cluster

OVERRIDES = [
    "placement.learner.num_gpus=1", "placement.rollout.num_gpus=1", "learner.num_workers=2",
    "logging.tensorboard=false", "logging.samples_every=0", "checkpoint.save_final=false", "checkpoint.every=0",
]


@pytest.fixture(scope="module")
def cluster():
    nodes = ({"num_cpus": 2, "num_gpus": 2, "resources": {"learners": 1}},
             {"num_cpus": 2, "num_gpus": 1, "resources": {"generators": 1}})
    with simulated_cluster({"num_cpus": 1, "num_gpus": 0}, *nodes, namespace=NAMESPACE,
                           runtime_env={"env_vars": actor_env()}) as (c, context):
        by_resource = {key: n["NodeID"] for n in ray.nodes() for key in ("learners", "generators") if key in n["Resources"]}
        yield c, by_resource | {"dashboard": f"http://{context.dashboard_url}"}


def test_plan_and_actors_follow_the_declared_gpus(cluster, tmp_path, monkeypatch):
    _, node = cluster
    monkeypatch.delenv("RLHF_DIST_MAX_THREADS")  # the threads the plan gives, not the suite's one
    cfg = load_config(None, [*OVERRIDES, "rollout.engine=hf"])
    plan = plan_placement(cfg, live_nodes())
    assert plan.group("learner").nodes == [node["learners"]] * 2
    assert plan.group("rollout").nodes == [node["generators"]]
    # `rlhf-dist plan --address` reads the same nodes through the head's state API.
    assert {n.node_id: n for n in state_api_nodes(node["dashboard"])} == {n.node_id: n for n in live_nodes()}

    from rlhf_dist.models.tiny import make_tiny

    model_path = str(make_tiny(tmp_path / "tiny", cfg.model.tiny, seed=0).policy)
    roles, _ = build_roles(cfg, model_path)
    try:
        where = ray.get([a.node_id.remote() for a in [*roles.learners, *roles.rollout, *roles.reference, *roles.reward]])
        assert where[:3] == [node["learners"], node["learners"], node["generators"]]
        planned = [s.node_id for role in ("reference", "reward") for s in plan.role_slots(role)]
        assert where[3:] == planned
        # Each node's cores shared by the actors of one phase there: two learner ranks on a 2-CPU node
        # one thread each, the engine alone on its 2-CPU node both.
        actors = {"learner": roles.learners, "rollout": roles.rollout, "reward": roles.reward}
        threads = {f"{role}-{i}": t for role, group in actors.items()
                   for i, t in enumerate(ray.get([a.threads.remote() for a in group]))}
        assert threads == plan.threads and threads["rollout-0"] == 2 and threads["learner-0"] == 1
    finally:
        stop_roles(roles, shutdown=False)
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())


def test_three_steps_on_the_cluster(cluster, tmp_path, monkeypatch):
    """`train` joins the cluster through RAY_ADDRESS, as a submitted job does."""
    c, _ = cluster
    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", c.address)
    cfg = load_config(None, [*OVERRIDES, "steps=3"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert [r["policy_version"] for r in result.records] == [0, 1, 2]
    assert all(r["sync/verified"] == 1.0 for r in result.records)
    assert not ray.is_initialized()  # train disconnected; the cluster lives on for other tests
    ray.init(address=c.address, namespace=NAMESPACE)


def _stage_cfg(tmp_path, **overrides):
    from rlhf_dist.config.stages import StageConfig
    from rlhf_dist.models.tiny import make_tiny

    base = make_tiny(tmp_path / "tiny", seed=0).policy
    return StageConfig(
        model={"path": str(base)}, logging={"tensorboard": False}, epochs=1,
        learner={"num_workers": 2, "mini_batch_size": 16, "micro_batch_size": 8},
        placement={"learner": {"num_gpus": 1, "num_cpus": 0.5}, "strategy": "STRICT_SPREAD"}, **overrides,
    )


def test_a_stage_world_spans_two_raylets_and_trains_as_one(cluster, tmp_path):
    """The stage's ranks start through the RL learners' launcher (`start_world`): STRICT_SPREAD puts
    them on the two GPU raylets, each in a bundle holding one declared GPU. After an epoch on
    different shards both ranks hold the same weights (equal held-out sums), which only one
    DeepSpeed world that all-reduces gradients gives."""
    from launch.stages import start_stage_world
    from rlhf_dist.data.synthetic import demonstrations
    from rlhf_dist.models.loading import load_tokenizer
    from rlhf_dist.stages.stage_data import sft_examples

    _, node = cluster
    cfg = _stage_cfg(tmp_path)
    tokenizer = load_tokenizer(cfg.model.path)
    examples = sft_examples(demonstrations(64, seed=0), tokenizer, cfg.data, cfg.seed)
    workers, groups = start_stage_world("sft", cfg, cfg.model.path, tokenizer.pad_token_id)
    try:
        assert sorted(ray.get([w.node_id.remote() for w in workers])) == sorted([node["learners"], node["generators"]])
        assert [g.bundle_specs for g in groups.values()] == [[{"CPU": 0.5, "GPU": 1.0}] * 2]
        before = ray.get([w.evaluate.remote(examples.eval) for w in workers])
        ray.get([w.train_epoch.remote(examples.train[r::2]) for r, w in enumerate(workers)])
        after = ray.get([w.evaluate.remote(examples.eval) for w in workers])
        assert after[0]["nll_sum"] == after[1]["nll_sum"] != before[0]["nll_sum"]
    finally:
        from launch.roles import release

        release(workers, list(groups.values()))


def test_an_sft_stage_runs_on_declared_gpus_of_the_cluster(cluster, tmp_path, monkeypatch):
    """`run_stage` in a process connected to the cluster (RAY_ADDRESS, as a submitted job) plans the
    world on its nodes and trains to the end."""
    from launch.stages import run_stage
    from rlhf_dist.data.synthetic import demonstrations

    monkeypatch.setenv("RAY_ADDRESS", cluster[0].address)
    cfg = _stage_cfg(tmp_path)
    result = run_stage("sft", cfg, tmp_path / "sft", rows=demonstrations(128, seed=0))
    assert result.history[-1]["sft/eval_loss"] < result.history[0]["sft/eval_loss"]
    assert (result.model_dir / "config.json").exists()
    assert ray.is_initialized()  # joined, not started: the cluster lives on
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())
