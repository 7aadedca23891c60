"""Weight-sync transports chosen per generator from placement plans, their routes, and the two ends
(a gloo group and the CUDA IPC handshake, with the CUDA calls faked) in threads of this process."""

import threading

import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.planning.placement import COLOCATED, Group, NodeResources, Plan, Slot, plan_placement
from rlhf_dist.weight_sync.buckets import Bucket, TensorMeta, checksum, flatten_bucket
from rlhf_dist.weight_sync.controller import WeightSyncError, check_devices
from rlhf_dist.weight_sync.group import free_port
from rlhf_dist.weight_sync.transports import (
    GeneratorRoute,
    LearnerRoute,
    Transport,
    choose_transports,
    describe,
    sync_routes,
)


def plan(*overrides, nodes=None):
    nodes = nodes or [NodeResources("id-a", 16, 4, "a"), NodeResources("id-b", 16, 4, "b")]
    return plan_placement(load_config(None, list(overrides)), nodes)


def kinds(transports):
    return [(t.kind, t.sender) for t in transports]


COLOCATED_RUN = ("placement.colocate=true", "rollout.num_workers=2", "placement.learner.num_gpus=0.5",
                 "placement.rollout.num_gpus=0.5")


def test_engines_on_their_learner_ranks_gpus_get_ipc_from_their_own_rank():
    transports = choose_transports(plan(*COLOCATED_RUN))
    assert kinds(transports) == [("ipc", 0), ("ipc", 1)]
    assert [t.backend for t in transports] == [None, None]
    assert describe(transports) == "rollout-0 ipc from learner-0, rollout-1 ipc from learner-1"


def test_separate_gpus_use_nccl_from_rank_0():
    p = plan("placement.learner.num_gpus=1", "placement.rollout.num_gpus=1", "rollout.num_workers=2")
    assert kinds(choose_transports(p)) == [("nccl", 0), ("nccl", 0)]


def test_cpu_run_uses_gloo():
    p = plan("rollout.num_workers=2", nodes=[NodeResources("n0", 8, 0, "local")])
    assert kinds(choose_transports(p)) == [("gloo", 0), ("gloo", 0)]


def test_gpu_learner_feeds_a_cpu_generator_through_a_host_copy_over_gloo():
    transports = choose_transports(plan("placement.learner.num_gpus=1"))
    assert kinds(transports) == [("host", 0)] and transports[0].backend == "gloo"


def test_a_cpu_learner_feeds_gpu_generators_over_gloo():
    assert kinds(choose_transports(plan("placement.rollout.num_gpus=1"))) == [("gloo", 0)]


def test_declared_gpus_that_the_actors_do_not_see_fall_back_to_gloo():
    """A test cluster declares GPUs it does not have: the actors compute on CPU, and so does the sync."""
    p = plan(*COLOCATED_RUN)
    no_cuda = {name: False for name in ("learner-0", "learner-1", "rollout-0", "rollout-1")}
    assert kinds(choose_transports(p, no_cuda)) == [("gloo", 0), ("gloo", 0)]
    assert kinds(choose_transports(p, {"rollout-1": False})) == [("ipc", 0), ("host", 0)]


def _mixed_plan(shared_with_rank: int) -> Plan:
    """Two GPU learner ranks; rollout-0 in the bundle of learner ``shared_with_rank``, rollout-1 on a
    GPU of its own, rollout-2 on CPU."""
    groups = [Group(COLOCATED, ("learner", "rollout"), "PACK", [{"GPU": 1.0}] * 2, ["a", "a"]),
              Group("rollout", ("rollout",), "PACK", [{"GPU": 1.0}, {"CPU": 1.0}], ["a", "a"])]
    slots = [Slot("learner", 0, COLOCATED, 0, "a", 1, 0.5), Slot("learner", 1, COLOCATED, 1, "a", 1, 0.5),
             Slot("rollout", 0, COLOCATED, shared_with_rank, "a", 1, 0.5), Slot("rollout", 1, "rollout", 0, "a", 1, 1.0),
             Slot("rollout", 2, "rollout", 1, "a", 1, 0.0)]
    return Plan(groups, slots, [NodeResources("a", 8, 4)])


def test_mixed_plan_ipc_nccl_and_host_side_by_side():
    """Not every rank has an engine on its GPU, so rank 0 sends everything: IPC to the engine on its
    own GPU, NCCL to the other GPU, a host copy to the CPU generator."""
    assert kinds(choose_transports(_mixed_plan(0))) == [("ipc", 0), ("nccl", 0), ("host", 0)]
    # An engine on rank 1's GPU while rank 0 broadcasts: rank 1 is in no group, so NCCL from rank 0 is fine.
    assert kinds(choose_transports(_mixed_plan(1))) == [("nccl", 0), ("nccl", 0), ("host", 0)]


def test_routes_give_each_backend_a_group_and_each_ipc_pair_a_channel():
    transports = [Transport(0, "ipc", 1), Transport(1, "nccl", 0), Transport(2, "host", 0), Transport(3, "nccl", 0),
                  Transport(4, "gloo", 0)]
    learners, generators = sync_routes(transports, 2, 2, ("10.0.0.1", 1234))
    assert learners == [
        LearnerRoute("10.0.0.1", 1234, True, (("nccl", 5), ("gloo", 5)), ()),
        LearnerRoute("10.0.0.1", 1234, False, (), ("rollout-0",)),
    ]
    # Tensor-parallel engines take one rank per worker: 1-2 and 3-4 in each group.
    assert generators == [
        GeneratorRoute("10.0.0.1", 1234, "ipc", channel="rollout-0"),
        GeneratorRoute("10.0.0.1", 1234, "nccl", 1, 5), GeneratorRoute("10.0.0.1", 1234, "host", 1, 5),
        GeneratorRoute("10.0.0.1", 1234, "nccl", 3, 5), GeneratorRoute("10.0.0.1", 1234, "gloo", 3, 5),
    ]
    assert [g.backend for g in generators] == [None, "nccl", "gloo", "nccl", "gloo"]
    assert all(l.sends for l in learners)
    only_ipc, _ = sync_routes([Transport(0, "ipc", 0)], 2, 1, ("h", 1))
    assert only_ipc[0].serves_store and only_ipc[0].groups == () and not only_ipc[1].sends


def test_devices_that_contradict_the_plan_are_refused_with_the_fix():
    check_devices([Transport(0, "ipc", 0), Transport(1, "nccl", 0)], ["gpu-A"], ["gpu-A", "gpu-B"])
    with pytest.raises(WeightSyncError, match="planned on the GPU of learner-0 .* sees GPU gpu-B"):
        check_devices([Transport(0, "ipc", 0)], ["gpu-A"], ["gpu-B"])
    with pytest.raises(WeightSyncError, match="NCCL cannot join two ranks on one device: set placement.colocate=true"):
        check_devices([Transport(0, "nccl", 0)], ["gpu-A"], ["gpu-A"])


def _bucket() -> tuple[Bucket, list[torch.Tensor]]:
    tensors = [torch.randn(3, 4), torch.randn(5)]
    metas = (TensorMeta("a", (3, 4), "torch.float32"), TensorMeta("b", (5,), "torch.float32"))
    return Bucket(metas), tensors


def test_learner_sender_and_receiver_meet_over_gloo_from_their_routes():
    from rlhf_dist.weight_sync.channels import LearnerSender, open_receiver

    bucket, tensors = _bucket()
    learners, generators = sync_routes([Transport(0, "gloo", 0)], 1, 1, ("127.0.0.1", free_port()))
    got = {}

    def generator():
        receiver = open_receiver(generators[0], generation=3, timeout_s=30)
        got["named"], got["sums"] = receiver.receive_all([bucket], "cpu")

    thread = threading.Thread(target=generator)
    thread.start()
    sender = LearnerSender(learners[0], generation=3, timeout_s=30)
    sent = sender.send_bucket(tensors)
    thread.join(30)
    assert got["sums"] == [sent] == [checksum(flatten_bucket(tensors))]
    assert [n for n, _ in got["named"]] == ["a", "b"] and torch.equal(got["named"][0][1], tensors[0])


def test_ipc_handshake_hands_over_one_bucket_at_a_time(monkeypatch):
    """The CUDA calls are faked (a registry stands in for the shared memory); the store protocol,
    the copy before the ack, the checksum and the layout check are the real ones."""
    import torch.distributed as dist

    from rlhf_dist.weight_sync import ipc as sync_channels

    shared: dict[str, torch.Tensor] = {}

    def share(t):
        shared["live"] = t
        return sync_channels.IpcHandle("gpu-A", tuple(t.shape), tuple(t.stride()), 0, str(t.dtype), "TypedStorage",
                                       "aGFuZGxl", t.numel() * 4, 0, "cmM=", 0, None, False)

    def open_(handle):
        assert sync_channels.IpcHandle.from_bytes(handle.to_bytes()) == handle
        return shared["live"]

    monkeypatch.setattr(sync_channels, "share_cuda", share)
    monkeypatch.setattr(sync_channels, "open_cuda", open_)
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False)
    client = dist.TCPStore("127.0.0.1", port, None, is_master=False)  # the generator's own connection
    bucket, tensors = _bucket()
    other = Bucket((TensorMeta("c", (7,), "torch.float32"),))
    sender = sync_channels.IpcSender(store, "rollout-0", 0)
    receiver = sync_channels.IpcReceiver(client, "rollout-0", 0)
    got = {}

    def generator():
        got["named"], got["sums"] = receiver.receive_all([bucket, bucket], "cpu")
        try:
            receiver.receive_bucket(other, "cpu")
        except WeightSyncError as exc:
            got["error"] = str(exc)
            receiver.store.set("ack", b"1")

    thread = threading.Thread(target=generator)
    thread.start()
    first, second = flatten_bucket(tensors), flatten_bucket([t * 2 for t in tensors])
    sender.send(first)
    sender.send(second)
    second.zero_()  # the learner may reuse its buffer after the ack: the generator holds a copy
    sender.send(flatten_bucket(tensors))
    thread.join(30)
    assert got["sums"] == [checksum(first), checksum(flatten_bucket([t * 2 for t in tensors]))]
    assert torch.equal(got["named"][2][1], tensors[0] * 2)
    assert "17 x torch.float32 arrived where 7 x torch.float32 was planned" in got["error"]
