"""The typed configuration tree of a run.

Every section is a pydantic model with ``extra="forbid"``: an unknown key is an error, not a
silently ignored typo. Field constraints (ranges, choices) live here; checks that involve several
fields live in :mod:`rlhf_dist.config.validate`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

# The algorithm section lives in its own file; importing it here keeps `schema.AlgorithmConfig` working.
from rlhf_dist.config.algorithm import AlgorithmConfig, KLConfig  # noqa: F401
from rlhf_dist.config.multi_turn import MultiTurnConfig
from rlhf_dist.config.placement import PlacementConfig
from rlhf_dist.config.section import Section


class TinyModelConfig(Section):
    """Shape of the random-init model built when ``model.path`` is null (no download needed)."""

    arch: Literal["llama", "qwen2"] = Field("llama", description="architecture of the random-init model (rlhf_dist/models/tiny.py)")
    hidden_size: int = Field(128, ge=32, description="num_heads * 64: vLLM's CPU attention needs head_dim 64")
    num_layers: int = Field(2, ge=1, le=64, description="decoder layers")
    num_heads: int = Field(2, ge=1, description="attention heads (as many key/value heads)")
    intermediate_size: int = Field(256, ge=8, description="width of each MLP block")
    vocab_size: int = Field(512, ge=300, le=65536, description="BPE vocabulary trained locally")
    max_position_embeddings: int = Field(
        512, ge=64, description="longest sequence the model takes (RL: rollout.max_model_len must fit in it)"
    )


class ModelConfig(Section):
    """The policy to train."""

    path: str | None = Field(None, description="Hugging Face model directory or hub name; null = tiny local model")
    tokenizer: str | None = Field(
        None, description="tokenizer of the data (prompts, stage rows), saved beside the trained model; null = the "
        "model's own"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the model weights; bfloat16/float16 also turn on DeepSpeed's mixed "
        "precision in the learners"
    )
    trust_remote_code: bool = Field(False, description="let transformers and vLLM run code shipped with the model")
    tiny: TinyModelConfig = Field(TinyModelConfig(), description="shape of the tiny model built when path is null")


class DataConfig(Section):
    """Where the prompts come from."""

    prompts: str = Field(
        "builtin:letters",
        description="a .jsonl or .parquet file, a `datasets` directory saved with save_to_disk, or builtin:<task>",
    )
    split: str = Field("train", description="the split to read when data.prompts is a saved DatasetDict")
    prompt_key: str = Field("prompt", description="column holding a text prompt")
    messages_key: str = Field(
        "messages", description="column holding a chat prompt, a list of {role, content}; used when a row has it"
    )
    apply_chat_template: bool = Field(
        False, description="wrap each text prompt as one user message and render it with the chat template"
    )
    chat_template: str | None = Field(
        None, description="a Jinja chat template used instead of the tokenizer's own; null = the tokenizer's"
    )
    system_prompt: str | None = Field(
        None, description="a system message put before every chat prompt that does not start with one"
    )
    max_prompt_tokens: int = Field(
        64, ge=1, description="tokens per prompt; text prompts keep their start, chat prompts their end"
    )
    overlong: Literal["truncate", "skip"] = Field("truncate", description="policy for prompts past max_prompt_tokens")
    shuffle: bool = Field(True, description="visit the prompts in a seeded random order, a new one each epoch")
    num_builtin_prompts: int = Field(1024, ge=1, description="size of a builtin synthetic prompt set")


class SamplingConfig(Section):
    """Sampling for rollouts. Logprobs are of the temperature-scaled distribution."""

    temperature: float = Field(
        1.0, ge=0.0, le=10.0, description="softmax temperature; 0 = greedy (eval only: training needs T > 0)"
    )
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="sample from the smallest set of tokens whose probability reaches top_p; 1 = off"
    )
    top_k: int = Field(-1, ge=-1, description="sample from the k most likely tokens; -1 = off")
    max_new_tokens: int = Field(16, ge=1, description="longest response, in tokens")


class RolloutConfig(Section):
    """The rollout generators."""

    engine: Literal["vllm", "hf"] = Field("vllm", description="vllm, or transformers generate where vLLM cannot run")
    num_workers: int = Field(1, ge=1, description="rollout generator actors, each a whole engine")
    prompts_per_step: int = Field(16, ge=1, description="prompts drawn per step; each gets samples_per_prompt responses")
    samples_per_prompt: int = Field(4, ge=1, description="responses per prompt: the group of grpo/rloo")
    sampling: SamplingConfig = Field(SamplingConfig(), description="how training responses are sampled")
    async_steps: int = Field(
        0, ge=0, description="generate the batch of step t+k while step t trains: samples are at most k policy "
        "versions old (see algorithm.is_correction); 0 = on-policy"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per engine (tensor parallel)")
    gpu_memory_utilization: float = Field(
        0.5, gt=0.0, le=1.0, description="vllm: share of each GPU's memory the engine may take (weights and KV cache)"
    )
    max_model_len: int = Field(
        256, ge=16, description="longest prompt + response in tokens (vLLM's max_model_len); must hold "
        "data.max_prompt_tokens + sampling.max_new_tokens"
    )
    kv_cache_gib: float = Field(1.0, gt=0.0, description="vLLM KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)")
    multi_turn: MultiTurnConfig | None = Field(
        None, description="trajectories of several turns with an env and tools (the README's env API); null = "
        "single-turn, sampling.max_new_tokens per response")


class RewardComponent(Section):
    """One term of the reward; the scorer sums ``weight * value`` over components."""

    type: Literal["model", "rule", "python", "remote"] = Field(
        description="rule: a named rule; python: module:function called fn(prompts, responses, **columns); "
        "remote: an HTTP server; model: a sequence-classification reward model"
    )
    name: str | None = Field(None, description="rule: registry name; model/python/remote: label in metrics")
    path: str | None = Field(None, description="model: directory; python: module:function")
    url: str | None = Field(None, description="remote: HTTP endpoint, POSTed {prompts, responses, columns}")
    args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="rule: its settings, e.g. {answer_key: answer} for math/exact_match, {pattern: ...} for format",
    )
    weight: float = Field(1.0, description="factor of this component in the summed reward")


class RewardConfig(Section):
    """The reward scorer."""

    components: list[RewardComponent] = Field(
        default_factory=lambda: [RewardComponent(type="rule", name="letters")],
        description="the terms of the reward, summed with their weights",
    )
    gold: str | RewardComponent | None = Field(
        None,
        description="a rule name, module:function, or a component ({type, name, path, url, args}) scored on "
        "every sample, logged as reward/gold_mean but not trained on",
    )
    clip: float | None = Field(None, gt=0.0, description="clip the summed reward to [-clip, clip]")
    timeout_s: float = Field(30.0, gt=0.0, description="seconds per call of a remote (each request) or Python component")
    retries: int = Field(3, ge=0, description="remote components: retries after a timeout, refusal or 5xx")
    backoff_s: float = Field(0.5, ge=0.0, description="remote components: wait before retry k is backoff_s * 2**k")
    max_response_bytes: int = Field(1_000_000, ge=1, description="remote components: larger answers are refused")
    num_workers: int = Field(1, ge=1, description="reward scorer actors; each scores a shard of the batch")

    def gold_component(self) -> RewardComponent | None:
        """``gold`` as a component: ``module:function`` stands for ``{type: python, path: <it>}``,
        any other string for ``{type: rule, name: <it>}``."""
        if not isinstance(self.gold, str):
            return self.gold
        if ":" in self.gold:
            return RewardComponent(type="python", path=self.gold)
        return RewardComponent(type="rule", name=self.gold)


class ReferenceConfig(Section):
    """The frozen reference policy."""

    path: str | None = Field(None, description="model directory of the reference; null = the initial policy")
    num_workers: int = Field(
        1, ge=1, description="reference actors; each computes log-probs for a shard of the batch (unused when the "
        "learner ranks hold the reference: placement.reference.colocate_with=learner_process)",
    )


class LoraConfig(Section):
    """LoRA adapters (peft), built in rlhf_dist/learner/engine.py ``with_lora``. With LoRA on, weight sync
    sends only the adapter tensors; vLLM serves them as a LoRA adapter, the hf engine through peft."""

    enabled: bool = Field(False, description="train LoRA adapters instead of all weights")
    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0.0, description="adapter scale numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on each adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="modules that get adapters: a list of module names, or all-linear"
    )
    adapt_head: bool = Field(
        True,
        description="also put an adapter on a causal LM's output head (lm_head), which all-linear leaves out: "
        "behind the final norm the body alone cannot sharpen near-uniform logits (README: LoRA). "
        "Skipped when the head is tied to the input embeddings",
    )


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # a moment decay rate of 1 never forgets: Adam's bias correction divides by 0


class OptimizerConfig(Section):
    """AdamW (decoupled weight decay, rlhf_dist/learner/engine.py) and its LR schedule (rlhf_dist/learner/lr_schedule.py)."""

    lr: float = Field(1e-5, gt=0.0, le=1.0, description="peak learning rate of the trained model: the policy, or a stage's model")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay")
    betas: tuple[Beta, Beta] = Field((0.9, 0.95), description="AdamW moment decay rates (beta1, beta2), each in [0, 1)")
    eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon")
    scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="LR after warmup: constant, or linear/cosine decay to min_lr_ratio x lr at the run's last optimizer step"
    )
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup from 0 to lr")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="floor of the linear/cosine decay, as a fraction of lr")
    fused: Literal["auto"] | bool = Field(
        "auto", description="auto: DeepSpeed's FusedAdam on CUDA (ZeRO 1-3), torch AdamW on CPU; true: FusedAdam "
        "(needs CUDA); false: torch AdamW"
    )


class LearnerOptimizerConfig(OptimizerConfig):
    """The RL learners' AdamW: the policy's, and the PPO critic's with its own peak LR."""

    critic_lr: float = Field(5e-5, gt=0.0, le=1.0, description="peak learning rate of the PPO critic")


class TrainerConfig(Section):
    """What every DeepSpeed training world reads (rlhf_dist/learner/engine.py): the RL learners' and each
    supervised stage's. The RL-only fields live in LearnerConfig, so a stage config cannot carry them."""

    num_workers: int = Field(2, ge=1, description="learner actors (data-parallel ranks)")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    mini_batch_size: int = Field(32, ge=1, description="sequences per optimizer step (all ranks)")
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward pass, per rank")
    grad_clip: float = Field(1.0, gt=0.0, description="clip the global gradient norm to this value")
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass (less memory, ~1/3 more compute)"
    )
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="AdamW and its learning-rate schedule")
    lora: LoraConfig = Field(LoraConfig(), description="LoRA adapters instead of full fine-tuning")
    offload: Literal["none", "optimizer", "all"] = Field(
        "none", description="DeepSpeed ZeRO offload to host memory: optimizer (fp32 master and Adam states; ZeRO "
        "1-3), all (also the weights; ZeRO 3); docs/memory.md"
    )


class LearnerConfig(TrainerConfig):
    """The RL learners: ``num_workers`` actors form one data-parallel world."""

    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    max_tokens_per_micro_batch: int = Field(
        0, ge=0, description="group sequences of similar length into micro-batches of at most this many positions "
        "(rows x longest prompt + longest response, padding trimmed) instead of micro_batch_size sequences; 0 = off"
    )
    optimizer: LearnerOptimizerConfig = Field(
        LearnerOptimizerConfig(), description="AdamW and its learning-rate schedule, for the policy and the critic"
    )
    critic_init: Literal["policy", "reward_model"] = Field(
        "policy", description="ppo: start the critic from the policy (zero value head) or from the reward model"
    )


class WandbConfig(Section):
    """Weights & Biases, one more sink of rlhf_dist/metrics/logger.py (rlhf_dist/metrics/wandb_sink.py); needs the wandb extra."""

    enabled: bool = Field(False, description="log scalars, the config and sample tables to W&B as well")
    project: str = Field("rlhf-dist", min_length=1, description="W&B project of the run")
    entity: str | None = Field(None, description="W&B user or team; null = the logged-in user's default entity")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online",
        description="online: stream to the W&B server (needs `wandb login` or WANDB_API_KEY); offline: no network, "
        "files under RUN_DIR/wandb to upload later with `wandb sync`; disabled: same as enabled=false",
    )


class MetricSinksConfig(Section):
    """Where metrics go besides RUN_DIR/metrics.jsonl (rlhf_dist/metrics/logger.py); a stage's whole logging section."""

    tensorboard: bool = Field(True, description="write scalars to RUN_DIR/tensorboard")
    wandb: WandbConfig = Field(WandbConfig(), description="Weights & Biases")


class LoggingConfig(MetricSinksConfig):
    """The metric sinks, and what an RL run shows on the console (launch/run.py) and in samples.jsonl (driver)."""

    progress_bar: bool = Field(True, description="a progress bar on a terminal; false (or no terminal): a line per step")
    samples_every: int = Field(
        5, ge=0, description="write a few completions to RUN_DIR/samples.jsonl (and W&B) every N steps; 0 = never"
    )


class CheckpointConfig(Section):
    """Checkpoints under RUN_DIR/checkpoints, for `rlhf-dist train --resume`."""

    every: int = Field(5, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_last: int = Field(2, ge=1, description="checkpoints kept; older ones are deleted")
    save_final: bool = Field(True, description="write the trained policy to RUN_DIR/final in Hugging Face format")
    on_sigterm: bool = Field(
        True, description="on SIGTERM (preemption): finish the current step, write a checkpoint, exit 143"
    )


class RecoveryConfig(Section):
    """What the driver does when an actor dies or a loss goes non-finite."""

    max_actor_restarts: int = Field(
        3, ge=0, description="restarts Ray gives each rollout / reward / reference actor; the step's work is redone"
    )
    max_nonfinite_steps: int = Field(
        3, ge=1, description="stop after this many steps in a row whose loss was NaN/inf (each one is skipped)"
    )


class MonitorConfig(Section):
    """The alarms: reward hacking (rlhf_dist/driver/hacking_alarm.py; proxy vs gold trends, KL per
    sequence) and collapse or no signal (rlhf_dist/driver/health.py). Each warns; none stops the run."""

    window: int = Field(5, ge=3, description="steps over which proxy and gold trends are fitted")
    min_gold_drop: float = Field(0.02, ge=0.0, description="gold fall along the window that counts as falling")
    kl_budget: float | None = Field(
        100.0, gt=0.0, description="reward-hacking alarm when kl/mean (nats/sequence) exceeds it; null = off"
    )
    kl_token_budget: float | None = Field(
        4.0, gt=0.0, description="KL alarm when kl/token_mean (nats/token) exceeds it; null = off"
    )
    kl_jump: float | None = Field(
        10.0, gt=1.0, description="KL alarm when kl/token_mean grows more than this factor in one step; null = off"
    )
    entropy_floor: float | None = Field(
        0.05, gt=0.0, lt=1.0, description="entropy alarm when policy/entropy falls below this share of its first value"
    )
    no_signal_steps: int = Field(
        3, ge=0, description="no-signal alarm after this many steps in a row where no group had reward spread; 0 = off"
    )


class EvalConfig(Section):
    """Held-out evaluation during RL on the rollout engines at the current weights (rlhf_dist/driver/evaluation.py)."""

    every: int = Field(0, ge=0, description="evaluate at step 0, every N steps and at the end; 0 = off")
    prompts: str | None = Field(
        None, description="eval prompts in any form data.prompts takes (JSONL, Parquet, datasets dir, builtin:<task>)"
    )
    holdout: int = Field(0, ge=0, description="instead of eval.prompts: hold this many prompts out of data.prompts")
    max_prompts: int = Field(64, ge=1, description="evaluate at most this many prompts (the first ones)")
    samples_per_prompt: int = Field(1, ge=1, description="k: responses per prompt; eval/pass@k uses all k")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="sampling temperature; 0 = greedy")


class RunConfig(Section):
    """A whole run."""

    name: str = Field(
        "run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description="names the default run dir runs/<name>-<time>, the Ray job and the Ray metrics' run label",
    )
    seed: int = Field(0, ge=0, description="seeds the prompt order, sampling, the tiny model and the learners")
    steps: int = Field(20, ge=1, description="RL steps: generate, score, train, sync weights")
    model: ModelConfig = Field(ModelConfig(), description="the policy to train")
    data: DataConfig = Field(DataConfig(), description="the training prompts")
    rollout: RolloutConfig = Field(RolloutConfig(), description="the rollout generators and sampling")
    reward: RewardConfig = Field(RewardConfig(), description="the reward scorer")
    reference: ReferenceConfig = Field(ReferenceConfig(), description="the frozen reference policy")
    learner: LearnerConfig = Field(LearnerConfig(), description="the DeepSpeed learners")
    algorithm: AlgorithmConfig = Field(AlgorithmConfig(), description="advantages, losses and the KL")
    placement: PlacementConfig = Field(PlacementConfig(), description="CPUs and GPUs per worker, colocation")
    logging: LoggingConfig = Field(LoggingConfig(), description="metric sinks, the console and samples")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="checkpoints for resume, and the final model")
    recovery: RecoveryConfig = Field(RecoveryConfig(), description="actor restarts and non-finite losses")
    monitor: MonitorConfig = Field(MonitorConfig(), description="the reward-hacking alarm")
    eval: EvalConfig = Field(EvalConfig(), description="held-out evaluation during RL")
