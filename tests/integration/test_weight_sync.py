"""Weight sync with real Ray actors, real DeepSpeed learners and real engines (vLLM and transformers).

Each test trains one real step (so the weights differ from the files the engines loaded), syncs,
and checks that every generator received exactly what the learner holds, bit for bit, and that
its log-probs on a probe now match the learner's. With LoRA only the adapter travels.
"""

import pytest
import ray
import torch

from launch.roles import build_roles, stop_roles
from launch.run import PROBE_TEXT
from rlhf_dist.config import load_config
from rlhf_dist.data import load_prompts
from rlhf_dist.driver.loop import Driver
from rlhf_dist.metrics.logger import MetricsLogger
from rlhf_dist.models.loading import load_causal_lm, load_tokenizer
from rlhf_dist.models.lora import with_lora
from rlhf_dist.weight_sync.buckets import checksum, flatten_bucket


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return str(tiny_model.policy)


def _driver(cfg, model_path, run_dir):
    tokenizer = load_tokenizer(model_path)
    prompts = load_prompts(cfg.data, tokenizer, cfg.seed).prompts
    roles, sync_address = build_roles(cfg, model_path)
    metrics = MetricsLogger(run_dir, tensorboard=False, progress=False)
    driver = Driver(cfg, roles, prompts, tokenizer.pad_token_id, tokenizer(PROBE_TEXT).input_ids, metrics, sync_address)
    driver.sync.open()
    return driver, metrics


def _expected_checksums(driver):
    """Checksums of the learner's full (gathered, merged) weights, computed here in the test."""
    state = ray.get([l.full_state_dict.remote() for l in driver.roles.learners])[0]
    return state, [checksum(flatten_bucket([state[m.name] for m in b.tensors])) for b in driver.sync.buckets]


def _sync_and_check(driver):
    """Train one step (it ends with a verified sync), then re-sync and compare bit for bit."""
    roles = driver.roles
    before = ray.get(roles.rollout[0].probe_logprobs.remote(driver.sync.probe_ids))
    record = driver.step(0)
    assert driver.policy_version == 1 and record["sync/verified"] == 1.0
    after = ray.get(roles.rollout[0].probe_logprobs.remote(driver.sync.probe_ids))
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-6, "training did not change the weights"
    learner = ray.get([l.probe_logprobs.remote(driver.sync.probe_ids) for l in roles.learners])[0]
    for generator in roles.rollout:
        got = ray.get(generator.probe_logprobs.remote(driver.sync.probe_ids))
        torch.testing.assert_close(torch.tensor(got), torch.tensor(learner), atol=1e-4, rtol=0)

    state, expected = _expected_checksums(driver)
    sends = [l.broadcast_weights.remote(driver.sync.buckets, driver.sync.probe_ids) for l in roles.learners]
    receives = [g.receive_weights.remote(driver.sync.layout, driver.sync.probe_ids) for g in roles.rollout]
    assert ray.get(sends)[0][0] == expected
    assert [r.checksums for r in ray.get(receives)] == [expected] * len(roles.rollout)
    return state


def test_vllm_two_generators_zero2(ray_cluster, model_path, tmp_path):
    cfg = load_config(None, ["rollout.num_workers=2", "learner.zero_stage=2", "rollout.prompts_per_step=8",
                             "learner.mini_batch_size=16", "learner.micro_batch_size=8",
                             "placement.rollout.num_cpus=0.25", "placement.learner.num_cpus=0.25"])
    driver, metrics = _driver(cfg, model_path, tmp_path)
    try:
        state = _sync_and_check(driver)
        assert all(t.dtype == torch.float32 for t in state.values())
    finally:
        metrics.close()
        stop_roles(driver.roles, shutdown=False)


def test_zero3_gather_path(ray_cluster, model_path, tmp_path):
    cfg = load_config(None, ["rollout.engine=hf", "learner.zero_stage=3", "rollout.prompts_per_step=8",
                             "learner.mini_batch_size=16", "learner.micro_batch_size=8"])
    driver, metrics = _driver(cfg, model_path, tmp_path)
    try:
        state = _sync_and_check(driver)
        # Under ZeRO-3 each rank holds a shard; the gathered tensors must have the full shapes.
        assert state["model.embed_tokens.weight"].shape == (512, 128)
    finally:
        metrics.close()
        stop_roles(driver.roles, shutdown=False)


def _param_bytes(model, trained_only: bool) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trained_only)


@pytest.mark.parametrize("engine, zero_stage", [("hf", 3), ("vllm", 2)])
def test_lora_syncs_only_the_adapter(ray_cluster, model_path, tmp_path, engine, zero_stage):
    """The generators get the adapter's bytes and nothing else, and then sample like the learner."""
    cfg = load_config(None, [f"rollout.engine={engine}", f"learner.zero_stage={zero_stage}", "learner.lora.enabled=true",
                             "learner.lora.r=4", "learner.optimizer.lr=1e-2", "rollout.prompts_per_step=8",
                             "learner.mini_batch_size=16", "learner.micro_batch_size=8"])
    # The adapter as the learner builds it, counted here: LoRA factors on every linear layer and the head.
    adapter = with_lora(load_causal_lm(model_path), cfg.learner.lora, "CAUSAL_LM")
    adapter_bytes, full_bytes = _param_bytes(adapter, True), _param_bytes(adapter.get_base_model(), False)
    driver, metrics = _driver(cfg, model_path, tmp_path)
    try:
        names = [m.name for b in driver.sync.buckets for m in b.tensors]
        assert all(".lora_A." in n or ".lora_B." in n for n in names) and "base_model.model.lm_head.lora_B.weight" in names
        generator, learner = driver.roles.rollout[0], driver.roles.learners
        before = ray.get(generator.probe_logprobs.remote(driver.sync.probe_ids))
        for step in range(2):  # two versions: the second adapter replaces the first
            record = driver.step(step)  # trains, syncs, and verifies checksums and the probe
            assert record["sync/verified"] == 1.0 and driver.policy_version == step + 1
            assert record["sync/bytes"] == adapter_bytes < full_bytes / 10
        after = ray.get(generator.probe_logprobs.remote(driver.sync.probe_ids))
        assert max(abs(a - b) for a, b in zip(before, after)) > 1e-3, "training did not change the adapter"
        want = ray.get([l.probe_logprobs.remote(driver.sync.probe_ids) for l in learner])[0]
        torch.testing.assert_close(torch.tensor(after), torch.tensor(want), atol=1e-4, rtol=0)
    finally:
        metrics.close()
        stop_roles(driver.roles, shutdown=False)
