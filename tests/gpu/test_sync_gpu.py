"""Weight sync and devices on a real GPU: what one GPU allows, plus NCCL where two are visible.

- CUDA IPC between a learner rank and the hf-engine generator that shares its GPU (placement.colocate):
  the transport chosen from the plan, checksums equal to the learner's weights bit for bit, the probe,
  in fp32 and in bf16 (whose probe tolerance is the looser one, CONTRACTS).
- Explicit devices: the actors of that run compute on the GPU their bundle assigned, and the roles
  left at num_gpus=0 see none.
- The IPC channel alone between two processes (no Ray): handles, copies and checksums.
- NCCL between a learner and a generator on distinct GPUs: only with >= 2 GPUs.
"""

import multiprocessing

import pytest
import torch

from rlhf_dist.weight_sync.buckets import Bucket, TensorMeta, checksum, flatten_bucket
from rlhf_dist.weight_sync.group import free_port
from rlhf_dist.weight_sync.transports import Transport

COMMON = [
    "rollout.engine=hf", "learner.num_workers=1", "rollout.num_workers=1", "rollout.prompts_per_step=8",
    "learner.mini_batch_size=16", "learner.micro_batch_size=8", "learner.optimizer.fused=false",
    "placement.learner.num_cpus=1", "placement.rollout.num_cpus=1",
    "placement.reference.colocate_with=null",  # a reference actor of its own, to check it sees no GPU
]
COLOCATED = ["placement.colocate=true", "placement.learner.num_gpus=0.5", "placement.rollout.num_gpus=0.5"]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (gpu/make-wheelhouse.sh builds a kit)")
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (gpu/make-wheelhouse.sh builds a kit)")
    from actors.shell import actor_env

    ray.init(address="local", num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False,
             namespace="test-sync-gpu", runtime_env={"env_vars": actor_env()})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from rlhf_dist.models.tiny import make_tiny

    return str(make_tiny(tmp_path_factory.mktemp("tiny")).policy)


def _driver(overrides, model_path, run_dir):
    from launch.roles import build_roles
    from launch.run import PROBE_TEXT
    from rlhf_dist.config import load_config
    from rlhf_dist.data import load_prompts
    from rlhf_dist.driver.loop import Driver
    from rlhf_dist.metrics.logger import MetricsLogger
    from rlhf_dist.models.loading import load_tokenizer

    cfg = load_config(None, overrides)
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data, tokenizer, cfg.seed).prompts
    roles, sync_address = build_roles(cfg, model_path)
    assert roles.plan is not None, "launch/roles.py build_roles must set roles.plan (the sync reads who shares a GPU)"
    metrics = MetricsLogger(run_dir, tensorboard=False, progress=False)
    driver = Driver(cfg, roles, prompts, tokenizer.pad_token_id, tokenizer(PROBE_TEXT).input_ids, metrics, sync_address)
    driver.sync.open()
    return driver, metrics


def _step_and_verify(ray, driver, tolerance):
    """One real step (it ends with a verified sync); then the generator's buckets equal checksums of
    the learner's full weights computed here, and its probe matches the learner's."""
    roles = driver.roles
    record = driver.step(0)
    assert record["sync/verified"] == 1.0 and driver.policy_version == 1
    assert record["sync/bytes"] == driver.sync.layout.nbytes  # the bytes handed over, by IPC too
    assert record["sync/probe_max_diff"] <= tolerance
    state = ray.get([l.full_state_dict.remote() for l in roles.learners])[0]
    expected = [checksum(flatten_bucket([state[m.name] for m in b.tensors])) for b in driver.sync.buckets]
    sends = [l.broadcast_weights.remote(driver.sync.buckets, driver.sync.probe_ids) for l in roles.learners]
    receives = [g.receive_weights.remote(driver.sync.layout, driver.sync.probe_ids) for g in roles.rollout]
    assert ray.get(sends)[0][0] == expected
    receipt = ray.get(receives)[0]
    assert receipt.checksums == expected
    learner_probe = ray.get(roles.learners[0].probe_logprobs.remote(driver.sync.probe_ids))
    diff = (torch.tensor(receipt.probe_logprobs) - torch.tensor(learner_probe)).abs().max().item()
    assert diff <= tolerance


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 2e-2)])
def test_colocated_generator_is_synced_by_cuda_ipc(cluster, model_path, tmp_path, dtype, tolerance):
    from launch.roles import stop_roles

    driver, metrics = _driver([*COMMON, *COLOCATED, f"model.dtype={dtype}"], model_path, tmp_path)
    try:
        assert driver.sync.transports == [Transport(0, "ipc", 0)]
        assert driver.sync.tolerance == tolerance
        _step_and_verify(cluster, driver, tolerance)
    finally:
        metrics.close()
        stop_roles(driver.roles, shutdown=False)


def test_each_actor_uses_exactly_its_bundles_gpu(cluster, model_path, tmp_path):
    from launch.roles import stop_roles

    driver, metrics = _driver([*COMMON, *COLOCATED], model_path, tmp_path)
    roles, plan = driver.roles, driver.roles.plan
    try:
        learner, engine = cluster.get([roles.learners[0].cuda_device.remote(), roles.rollout[0].cuda_device.remote()])
        assert learner is not None and learner == engine  # one GPU, shared by the bundle's two actors
        assert plan.device(plan.slot("learner", 0)).startswith("cuda:0 (0.5 of one GPU, shared with rollout-0")
        for actor in [*roles.reference, *roles.reward]:  # num_gpus=0: no GPU at all, not cuda:0 of the node
            assert cluster.get(actor.cuda_device.remote()) is None
            assert cluster.get(actor.visible_devices.remote()) == ("", [])
        assert plan.device(plan.slot("reference", 0)) == 'cpu (CUDA_VISIBLE_DEVICES="")'
    finally:
        metrics.close()
        stop_roles(roles, shutdown=False)


def _receive_in_child(port: int, buckets: list[Bucket], out) -> None:
    import torch.distributed as dist

    from rlhf_dist.weight_sync.ipc import IpcReceiver

    store = dist.TCPStore("127.0.0.1", port, None, is_master=False)
    named, sums = IpcReceiver(store, "rollout-0", 0).receive_all(buckets, "cuda")
    out.put((sums, [t.float().sum().item() for _, t in named], named[0][1].device.type))


def test_ipc_channel_hands_buckets_to_another_process_on_the_gpu():
    """No Ray: a spawned process opens the handles; the sender reuses its buffer after each ack."""
    import torch.distributed as dist

    from rlhf_dist.weight_sync.ipc import IpcSender

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False)
    bucket = Bucket((TensorMeta("w", (256, 64), "torch.bfloat16"), TensorMeta("b", (64,), "torch.bfloat16")))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_receive_in_child, args=(port, [bucket, bucket], out))
    child.start()
    sender = IpcSender(store, "rollout-0", 0)
    flat = torch.empty(bucket.numel, dtype=torch.bfloat16, device="cuda")
    want_sums, want_totals = [], []
    for value in (1.0, 2.0):
        flat.fill_(value)  # one buffer, refilled: the child must have copied the first before the ack
        want_sums.append(checksum(flat))
        want_totals.append(value * bucket.numel)
        sender.send(flat)
    sums, totals, device = out.get(timeout=120)
    child.join(60)
    assert child.exitcode == 0 and device == "cuda"
    assert sums == want_sums
    assert [round(totals[0] + totals[1]), round(totals[2] + totals[3])] == [round(t) for t in want_totals]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between distinct GPUs needs >= 2 visible GPUs")
def test_generator_on_another_gpu_is_synced_over_nccl(cluster, model_path, tmp_path):
    from launch.roles import stop_roles

    gpus = ["placement.learner.num_gpus=1", "placement.rollout.num_gpus=1"]
    driver, metrics = _driver([*COMMON, *gpus], model_path, tmp_path)
    try:
        assert driver.sync.transports == [Transport(0, "nccl", 0)]
        devices = cluster.get([driver.roles.learners[0].cuda_device.remote(), driver.roles.rollout[0].cuda_device.remote()])
        assert None not in devices and devices[0] != devices[1]
        _step_and_verify(cluster, driver, 1e-4)
    finally:
        metrics.close()
        stop_roles(driver.roles, shutdown=False)
