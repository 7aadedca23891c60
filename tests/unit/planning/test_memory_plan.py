"""The memory planner's formulas against cases worked out by hand (docs/memory.md), the per-bundle
plan (colocated peak, fractional share), the refusal, `--nodes ...:GPU_GIB`, and a 70B plan in seconds."""

import json
import time

import pytest

from launch.cluster import parse_nodes
from rlhf_dist.config import load_config
from rlhf_dist.config.schema import LoraConfig
from rlhf_dist.errors import UserError
from rlhf_dist.planning.memory_formulas import (
    GIB,
    ModelShape,
    activation_bytes,
    kv_cache_bytes,
    logits_bytes,
    lora_params,
    model_shape,
    model_states,
    rollout_estimate,
    shape_of_path,
)
from rlhf_dist.planning.memory_plan import ActorEstimate, BundleEstimate, _combine, memory_table, plan_memory, refusal
from rlhf_dist.planning.placement import plan_placement

ONE_B = 2**30  # "1B" parameters, so that bytes per parameter read directly as GiB


def gib(states):
    return {k: v / GIB for k, v in vars(states).items()}


def test_bf16_zero2_world4_by_hand():
    # weights 2 B/param = 2 GiB (ZeRO-2 keeps them whole); fp32 master 4/4 = 1; Adam m, v 8/4 = 2;
    # bf16 gradient partition 2/4 = 0.5; the step's fp32 copy of it 4/4 = 1; one bf16 reduce bucket of
    # 5e8 elements = 1e9 bytes = 0.931 GiB.
    s = gib(model_states(ONE_B, ONE_B, 2, zero_stage=2, world=4))
    assert s == pytest.approx({"weights": 2.0, "master": 1.0, "optimizer": 2.0, "gradients": 0.5,
                               "step_copy": 1.0, "buckets": 1e9 / GIB})


def test_zero_stages_partition_what_they_should():
    z1 = gib(model_states(ONE_B, ONE_B, 2, 1, 8))  # stage 1: optimizer states and master split (and the
    assert (z1["weights"], z1["master"], z1["optimizer"], z1["gradients"]) == (2.0, 0.5, 1.0, 0.25)  # grad partition)
    assert z1["buckets"] == pytest.approx(4 * 5e8 / GIB)  # ZeRO-1 stages its bucket in fp32
    z3 = gib(model_states(ONE_B, ONE_B, 2, 3, 8))  # stage 3: the weights too, 2/8
    assert (z3["weights"], z3["master"], z3["optimizer"], z3["gradients"]) == (0.25, 0.5, 1.0, 0.25)
    assert z3["buckets"] == pytest.approx(2 * (5e8 + 5e7) / GIB)  # reduce + prefetch, bf16
    z0 = gib(model_states(ONE_B, ONE_B, 4, 0, 8))  # stage 0 fp32: nothing split, no master copy
    assert (z0["weights"], z0["master"], z0["optimizer"], z0["gradients"], z0["step_copy"]) == (4, 0, 8, 4, 0)


def test_offload_moves_states_to_the_host():
    opt = gib(model_states(ONE_B, ONE_B, 2, 2, 4, offload="optimizer"))
    assert (opt["weights"], opt["master"], opt["optimizer"], opt["step_copy"]) == (2.0, 0.0, 0.0, 0.0)
    assert opt["gradients"] == 0.5  # the gradient partition is reduced on the GPU, then copied over
    everything = gib(model_states(ONE_B, ONE_B, 2, 3, 4, offload="all"))
    assert (everything["weights"], everything["master"], everything["optimizer"]) == (0.0, 0.0, 0.0)


def test_lora_trains_only_the_adapters():
    # 1B frozen bf16 weights (2 GiB), 2^20 adapter parameters: master 4 MiB / 2, Adam 8 MiB / 2, grads 2 MiB / 2
    s = model_states(ONE_B, 2**20, 2, 2, 2)
    assert s.weights / GIB == 2.0
    assert (s.master, s.optimizer, s.gradients) == (2 * 2**20, 4 * 2**20, 2**20)


TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, tie_word_embeddings=False)


def tiny_shape() -> ModelShape:
    from transformers import LlamaConfig

    from rlhf_dist.planning.memory_formulas import shape_from_config

    return shape_from_config(LlamaConfig(**TINY))


def test_parameter_count_of_the_tiny_llama_by_hand():
    # embed 512 x 128 = 65,536; per layer q,k,v,o 4 x 128^2 = 65,536 + MLP 3 x 128 x 256 = 98,304 + two
    # norms 256 = 164,096; x 2 layers = 328,192; final norm 128; untied head 65,536 -> 459,392
    shape = tiny_shape()
    assert shape.params == 459_392
    assert (shape.hidden, shape.layers, shape.kv_heads, shape.head_dim, shape.vocab) == (128, 2, 2, 64, 512)
    assert shape.backbone_params == 459_392 - 65_536
    assert model_shape(load_config(None, []).model).params == 459_392  # the default tiny model, no build


def test_lora_count_by_hand_and_against_peft():
    # r=8: q,k,v,o 4 x 8 x (128+128) = 8,192; gate, up 2 x 8 x (128+256) = 6,144; down 8 x 384 = 3,072:
    # 17,408 per layer, 34,816 for 2; the head (adapt_head) 8 x (128+512) = 5,120 -> 39,936
    shape = tiny_shape()
    lora = LoraConfig(enabled=True, r=8)
    assert lora_params(shape, lora) == 39_936
    assert lora_params(shape, lora.model_copy(update={"adapt_head": False})) == 34_816
    assert lora_params(shape, lora.model_copy(update={"target_modules": ["q_proj", "v_proj"]})) == 2 * 2 * 2048 + 5120

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_dist.models.lora import with_lora

    torch.manual_seed(0)
    model = with_lora(LlamaForCausalLM(LlamaConfig(**TINY)), lora, "CAUSAL_LM")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 39_936


def test_activation_logits_and_kv_formulas_by_hand():
    shape = ModelShape(params=0, hidden=8, layers=3, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10,
                       tied=False)
    # per token per layer: b (10 h + 4 kv d + 4 I) + 4 x 2 h = 2 (80 + 16 + 64) + 64 = 384 bytes
    assert activation_bytes(shape, tokens=5, dtype_bytes=2, checkpointing=False) == 3 * 5 * 384
    # checkpointed: each layer keeps its input, 5 x 8 x 2 = 80 bytes, plus one layer recomputed (1,920)
    assert activation_bytes(shape, tokens=5, dtype_bytes=2, checkpointing=True) == 3 * 80 + 5 * 384
    assert logits_bytes(rows=2, seq=3, vocab=10, dtype_bytes=2) == 2 * 3 * 10 * (2 + 4 + 4)
    assert kv_cache_bytes(shape, tokens=7, dtype_bytes=2) == 2 * 3 * 1 * 4 * 7 * 2


def test_rollout_engines():
    shape = ModelShape(params=ONE_B, hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                       intermediate=11008, vocab=32000, tied=False)
    cfg = load_config(None, ["model.dtype=bfloat16", "rollout.gpu_memory_utilization=0.5"])
    vllm = rollout_estimate(cfg, shape, device_gib=80)
    assert vllm.peak / GIB == 40.0 and vllm.items["weights"] / GIB == 2.0 and vllm.items["KV cache"] / GIB == 38.0
    hf = rollout_estimate(cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"engine": "hf"})}), shape, 80)
    batch = min(64, cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt)
    seq = min(cfg.rollout.max_model_len, cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens)
    assert hf.items["KV cache"] == 2 * 32 * 8 * 128 * batch * seq * 2
    assert hf.idle == 2 * ONE_B  # no sleep: the hf engine keeps its weights while the learner trains


def test_colocated_bundle_takes_the_peak_of_the_two_phases():
    learner = ActorEstimate("learner-0", {}, peak=30 * GIB, idle=10 * GIB)
    engine = ActorEstimate("rollout-0", {}, peak=40 * GIB, idle=0.0)
    bundle = _combine(BundleEstimate("rollout+learner", 0, "gpu1", 1.0, 80, [learner, engine]), colocated=True)
    # train: learner 30 + sleeping engine 0; generate: learner's states 10 + engine 40 -> 50
    assert bundle.phases == {"train": 30 * GIB, "generate": 50 * GIB} and bundle.peak == 50 * GIB and bundle.fits
    alone = _combine(BundleEstimate("learner", 0, "gpu1", 0.5, 80, [learner]), colocated=False)
    assert alone.peak == 30 * GIB and alone.capacity == 40 * GIB  # half a GPU: half its memory


def test_parse_nodes_reads_gpu_memory():
    head, a, b = parse_nodes("head:8:0,a:32:8,b:32:4:40")
    assert (head.gpu_gib, a.gpu_gib, b.gpu_gib) == (0.0, 80.0, 40.0)
    for bad in ("a:1:1:0", "a:1:1:x", "a:1:1:40:9"):
        with pytest.raises(UserError, match="NAME:CPUS:GPUS:GPU_GIB, the memory of each GPU"):
            parse_nodes(bad)


LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def llama_70b(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama70b")
    (path / "config.json").write_text(json.dumps(LLAMA_70B))
    return str(path)


def test_a_70b_config_plans_in_seconds_and_is_refused_with_fixes(llama_70b):
    started = time.perf_counter()
    shape = shape_of_path(llama_70b, False)
    # 2 x 32000 x 8192 + 80 x (2 x 8192^2 + 2 x 8192 x 1024 + 3 x 8192 x 28672 + 2 x 8192) + 8192
    assert shape.params == 68_976_648_192
    cfg = load_config(None, [f"model.path={llama_70b}", "model.dtype=bfloat16", "learner.num_workers=8",
                             "placement.reference.colocate_with=null",
                             "learner.micro_batch_size=1", "learner.mini_batch_size=8", "placement.learner.num_gpus=1",
                             "placement.rollout.num_gpus=1", "rollout.num_workers=1"])
    plan = plan_placement(cfg, parse_nodes("gpu1:64:8,gpu2:64:8"))
    bundles = plan_memory(cfg, plan)
    assert time.perf_counter() - started < 30
    learner = next(b for b in bundles if b.group == "learner")
    # ZeRO-2: the whole bf16 policy on each rank, 2 x 69.0e9 bytes = 128.5 GiB, over an 80 GiB device
    assert learner.actors[0].items["weights"] / GIB == pytest.approx(2 * 68_976_648_192 / GIB)
    assert not learner.fits
    message = refusal(cfg, bundles)
    assert "cannot fit" in message and "80 GiB" in message and "--force" in message
    assert "learner.zero_stage=3" in message and "learner.offload=optimizer" in message
    assert "learner.lora.enabled=true" in message
    assert "rollout.tensor_parallel_size=2 with placement.rollout.num_gpus=2" in message  # 128 GiB of weights
    assert "DOES NOT FIT" in memory_table(cfg, plan, bundles)

    fits = load_config(None, ["placement.reference.colocate_with=null", f"model.path={llama_70b}",
                              "model.dtype=bfloat16", "learner.num_workers=8", "learner.micro_batch_size=1", "learner.mini_batch_size=8", "placement.learner.num_gpus=1",
                              "learner.zero_stage=3", "learner.offload=all", "learner.gradient_checkpointing=true",
                              "rollout.tensor_parallel_size=4", "placement.rollout.num_gpus=4",
                              "rollout.gpu_memory_utilization=0.9"])
    assert refusal(fits, plan_memory(fits, plan_placement(fits, parse_nodes("gpu1:64:8,gpu2:64:8")))) is None


def test_train_preflight_refuses_before_any_actor_and_force_overrides(llama_70b, capsys):
    from launch.preflight import memory_check
    from rlhf_dist.planning.memory_plan import MemoryPlanError

    cfg = load_config(None, ["placement.reference.colocate_with=null", f"model.path={llama_70b}",
                             "model.dtype=bfloat16", "learner.num_workers=2", "learner.micro_batch_size=1", "learner.mini_batch_size=2", "placement.learner.num_gpus=1"])
    nodes = lambda: parse_nodes("gpu:16:4:80")  # noqa: E731
    with pytest.raises(MemoryPlanError, match="learner bundle 0 on node gpu, needs ~.* GiB per device but has 80 GiB"):
        memory_check(cfg, nodes)
    memory_check(cfg, nodes, force=True)
    assert "--force: starting anyway" in capsys.readouterr().err
    memory_check(load_config(None, []), lambda: pytest.fail("a CPU run reads no nodes"))


def test_plan_command_prints_the_memory_table(capsys):
    from launch.cli.main import main

    assert main(["plan", "--nodes", "head:4:0"]) == 0
    out = capsys.readouterr().out
    assert "CPU-only plan, no GPU bundles: every GPU figure is 0 GiB" in out and "learner    weights" in out
    assert main(["plan", "placement.learner.num_gpus=1", "--nodes", "head:4:0,gpu:8:2:24"]) == 0
    out = capsys.readouterr().out
    assert "learner bundle 0  node gpu  device 24 GiB" in out and "verdict: every GPU bundle fits" in out


def test_offload_needs_its_zero_stage_in_rl_and_stage_configs():
    from rlhf_dist.config import ConfigError
    from rlhf_dist.config.stages import StageConfig

    for schema in ({}, {"schema": StageConfig}):
        with pytest.raises(ConfigError, match="learner.offload=all needs learner.zero_stage >= 3 \\(got 2\\)"):
            load_config(None, ["learner.zero_stage=2", "learner.offload=all"], **schema)
        with pytest.raises(ConfigError, match="learner.offload=optimizer needs learner.zero_stage >= 1"):
            load_config(None, ["learner.zero_stage=0", "learner.offload=optimizer"], **schema)
        assert load_config(None, ["learner.zero_stage=3", "learner.offload=all"], **schema).learner.offload == "all"


def test_fused_optimizer_choice_on_cpu():
    import torch

    from rlhf_dist.learner.engine import SkippingAdamW, make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(make_optimizer(params, load_config(None, []).learner, 1e-3)) is SkippingAdamW  # auto, no CUDA
    with pytest.raises(UserError, match="fused=true needs CUDA"):
        make_optimizer(params, load_config(None, ["learner.optimizer.fused=true"]).learner, 1e-3)
