"""The memory planner: GiB per GPU bundle, from the model's config alone (docs/memory.md).

Pure arithmetic over a `ModelShape` (a meta-device build: no weights, a 70B config in seconds) and
the run config; no Ray, no DeepSpeed. `plan_memory(cfg, plan)` gives one `BundleEstimate` per GPU
bundle of a `Plan`; `refusal(estimates, cfg)` says why a plan cannot fit and what to change.

Sizes are bytes per device. ``b`` is the bytes of ``model.dtype``; P the parameters of a model,
P_t those that train (LoRA: the adapters), N the learners' world size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rlhf_dist.config.schema import ModelConfig, RunConfig, TinyModelConfig

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# DeepSpeed's bucket sizes, in elements; distributed.build_engine writes these into the engine config.
REDUCE_BUCKET = 500_000_000
ALLGATHER_BUCKET = 500_000_000
PREFETCH_BUCKET = 50_000_000
DEFAULT_GPU_GIB = 80.0
HF_BATCH = 64  # sequences per transformers generate call (rlhf_dist.rollout.hf_engine.HFEngine.batch_size)


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need from a causal LM's config."""

    params: int  # all parameters, the output head included
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool  # output head shares the input embedding
    linears: tuple[tuple[str, int, int], ...] = ()  # (module name, in, out) of each nn.Linear, for LoRA

    @property
    def backbone_params(self) -> int:
        """Without the output head: a critic's or reward model's body (its own head is hidden + 1)."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)


def shape_from_config(config) -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and count."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    head = model.get_output_embeddings()
    inputs = model.get_input_embeddings()
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),  # shared (tied) weights counted once
        hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size), vocab=config.vocab_size,
        tied=head is not None and inputs is not None and head.weight is inputs.weight,
        linears=tuple((n, m.in_features, m.out_features) for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear)),
    )


@functools.lru_cache(maxsize=16)
def shape_of_path(path: str, trust_remote_code: bool) -> ModelShape:
    from transformers import AutoConfig

    return shape_from_config(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))


def tiny_config(spec: TinyModelConfig):
    """The transformers config `rlhf_dist.models.tiny` builds for ``spec`` (vocabulary: spec.vocab_size)."""
    from transformers import LlamaConfig, Qwen2Config

    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.arch](
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False,
    )


def model_shape(model: ModelConfig) -> ModelShape:
    if model.path is None:
        return shape_from_config(tiny_config(model.tiny))
    return shape_of_path(model.path, model.trust_remote_code)


def lora_params(shape: ModelShape, lora) -> int:
    """r x (in + out) per adapted Linear; all-linear leaves the head out, ``adapt_head`` puts it back
    unless it is tied (rlhf_dist.models.lora.lora_targets)."""
    head = "lm_head"
    names = {n.rsplit(".", 1)[-1] for n, _, _ in shape.linears} - {head}
    targets = names if lora.target_modules == "all-linear" else set(lora.target_modules)
    if lora.adapt_head and not shape.tied:
        targets = targets | {head}
    return sum(lora.r * (i + o) for n, i, o in shape.linears if n.rsplit(".", 1)[-1] in targets)


# -- the formulas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStates:
    """One trained model's state on one learner rank, in bytes."""

    weights: float  # b P; ZeRO-3: b P / N; offload=all: 0
    master: float  # fp32 master partition: 4 P_t / N (ZeRO >= 1); stage 0: 4 P_t when b < 4
    optimizer: float  # Adam m and v in fp32: 8 P_t / N (ZeRO >= 1), 8 P_t at stage 0
    gradients: float  # gradient partition in the weights' dtype: b P_t / N (ZeRO >= 1); stage 0: 4 P_t
    step_copy: float  # transient fp32 copy of the gradient partition at the step: 4 P_t / N when b < 4
    buckets: float  # DeepSpeed's reduce/allgather (ZeRO-3: prefetch) buckets, configured constants

    @property
    def persistent(self) -> float:
        return self.weights + self.master + self.optimizer


def model_states(params: int, trainable: int, dtype_bytes: int, zero_stage: int, world: int,
                 offload: str = "none") -> ModelStates:
    b, n = dtype_bytes, world
    part = n if zero_stage >= 1 else 1
    weights = 0.0 if offload == "all" else b * params / (n if zero_stage == 3 else 1)
    on_host = offload in ("optimizer", "all")
    master = 0.0 if on_host or (zero_stage == 0 and b == 4) else 4 * trainable / part
    optimizer = 0.0 if on_host else 8 * trainable / part
    gradients = 4 * trainable if zero_stage == 0 else b * trainable / part
    step_copy = 0.0 if on_host or b == 4 or zero_stage == 0 else 4 * trainable / part
    if zero_stage == 0:
        buckets = 0.0
    elif zero_stage == 3:
        buckets = b * (REDUCE_BUCKET + PREFETCH_BUCKET)
    else:  # one reduce bucket (two with overlap_comm), stage 1 staged in fp32
        buckets = (4 if zero_stage == 1 else b) * REDUCE_BUCKET
    return ModelStates(weights, master, optimizer, gradients, step_copy, buckets)


def activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
    """Activations kept for the backward of one micro-batch of ``tokens`` positions.

    Per decoder layer and token, a Llama-style layer keeps about 10 h + 4 kv d + 4 I values of b
    bytes (norm inputs, q/k/v before and after rotary, attention output, MLP gate/up/act inputs,
    down input) plus 2 h fp32 values (RMSNorm's upcast). Checkpointed, a layer keeps only its
    input (h values) and one layer is recomputed at a time.
    """
    b, h = dtype_bytes, shape.hidden
    per_token = b * (10 * h + 4 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate) + 4 * 2 * h
    full_layer = tokens * per_token
    if checkpointing:
        return shape.layers * tokens * h * b + full_layer
    return shape.layers * full_layer


def logits_bytes(rows: int, seq: int, vocab: int, dtype_bytes: int) -> float:
    """B x T x V logits in the model's dtype, their fp32 copy and the log-softmax copy."""
    return rows * seq * vocab * (dtype_bytes + 4 + 4)


def kv_cache_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> float:
    """Keys and values of ``tokens`` positions: 2 x layers x kv_heads x head_dim x tokens x b."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * dtype_bytes


# -- per actor ------------------------------------------------------------------------------------


@dataclass
class ActorEstimate:
    """One actor's items (bytes), its peak, and what it holds in the other phase of a colocated GPU."""

    name: str
    items: dict[str, float]
    peak: float
    idle: float = 0.0  # while the colocated partner runs: a learner keeps its persistent states, vLLM sleeps


def learner_estimate(cfg: RunConfig, shape: ModelShape) -> ActorEstimate:
    learner, b = cfg.learner, DTYPE_BYTES[cfg.model.dtype]
    trainable = lora_params(shape, learner.lora) if learner.lora.enabled else shape.params
    models = [model_states(shape.params, trainable, b, learner.zero_stage, learner.num_workers, learner.offload)]
    if cfg.algorithm.name == "ppo":  # the critic: the body plus a value head, trained in full
        critic = shape.backbone_params + shape.hidden
        models.append(model_states(critic, critic, b, learner.zero_stage, learner.num_workers, learner.offload))
    seq = min(cfg.rollout.max_model_len, cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens)
    tokens = learner.max_tokens_per_micro_batch or learner.micro_batch_size * seq
    rows = max(1, tokens // seq)
    items = {
        "weights": sum(m.weights for m in models),
        "master fp32": sum(m.master for m in models),
        "optimizer": sum(m.optimizer for m in models),
        "gradients": sum(m.gradients for m in models),
        "activations": activation_bytes(shape, tokens, b, learner.gradient_checkpointing),
        "logits": logits_bytes(rows, seq, shape.vocab, b),
        "buckets": max(m.buckets for m in models),
    }
    step = max(m.step_copy for m in models)  # the step needs the fp32 gradient copy, not the activations
    peak = sum(items.values()) - items["activations"] - items["logits"]
    peak += max(items["activations"] + items["logits"], step)
    if step:
        items["step: fp32 gradients"] = step  # shown, and counted in the peak through max() above
    return ActorEstimate("learner", items, peak, idle=sum(m.persistent for m in models))


def rollout_estimate(cfg: RunConfig, shape: ModelShape, device_gib: float) -> ActorEstimate:
    """vLLM takes gpu_memory_utilization of each device (weights, then KV cache in the rest); the hf
    engine holds the weights and the KV cache of one generate batch."""
    rollout, b = cfg.rollout, DTYPE_BYTES[cfg.model.dtype]
    weights = b * shape.params / rollout.tensor_parallel_size
    if rollout.engine == "vllm":
        total = rollout.gpu_memory_utilization * device_gib * GIB
        items = {"weights": weights, "KV cache": max(0.0, total - weights)}
        return ActorEstimate("rollout", items, max(total, weights))  # asleep while a colocated learner trains
    batch = min(HF_BATCH, rollout.prompts_per_step * rollout.samples_per_prompt // rollout.num_workers)
    seq = min(rollout.max_model_len, cfg.data.max_prompt_tokens + rollout.sampling.max_new_tokens)
    items = {"weights": weights, "KV cache": kv_cache_bytes(shape, batch * seq, b),
             "logits": batch * shape.vocab * (b + 4)}
    return ActorEstimate("rollout", items, sum(items.values()), idle=weights)  # no sleep: weights stay


def frozen_estimate(name: str, cfg: RunConfig, params: int, shape: ModelShape, vocab_out: int) -> ActorEstimate:
    """A frozen model's forward on one micro-batch: weights, one layer of activations, its outputs."""
    b = DTYPE_BYTES[cfg.model.dtype]
    seq = min(cfg.rollout.max_model_len, cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens)
    rows = cfg.learner.micro_batch_size
    items = {
        "weights": b * params,
        "activations": activation_bytes(shape, rows * seq, b, checkpointing=False) / shape.layers,
        "logits": logits_bytes(rows, seq, vocab_out, b) if vocab_out > 1 else 0.0,
    }
    return ActorEstimate(name, items, sum(items.values()), idle=items["weights"])  # weights stay resident
