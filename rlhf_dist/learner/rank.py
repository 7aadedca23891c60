"""The learner: one data-parallel rank of the DeepSpeed world that trains the policy (and critic).

`actors/learner.py` wraps this class in a Ray actor; every method that touches parameters is
called on all ranks together (ZeRO-3 gathers and the gradient all-reduce are collectives).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import torch

from rlhf_dist.algorithms import (
    aggregate_loss,
    kl_estimate,
    masked_mean,
    ppo_policy_loss,
    resolve_is_correction,
    value_loss,
)
from rlhf_dist.checkpoints.files import CheckpointError, load_tree, rng_state, save_tree, set_rng_state
from rlhf_dist.config import RunConfig
from rlhf_dist.experience import Experience
from rlhf_dist.learner.collectives import all_reduce
from rlhf_dist.learner.critic import CriticModel
from rlhf_dist.learner.engine import build_engine, init_learner_world
from rlhf_dist.learner.lr_schedule import rl_optimizer_steps, schedule_from_config
from rlhf_dist.learner.micro_batches import (
    MicroBatch,
    MicroBatchStats,
    MicroStats,
    padded_positions,
    plan_micro_batches,
)
from rlhf_dist.learner.proximal import StepTally, from_training_pass
from rlhf_dist.learner.train_stats import TrainStats
from rlhf_dist.models.loading import disable_dropout, enable_gradient_checkpointing, load_causal_lm
from rlhf_dist.models.lora import with_lora
from rlhf_dist.models.saving import write_hf_model
from rlhf_dist.models.sequences import probe_logprobs, response_logprobs
from rlhf_dist.models.weights import adapter_entries, adapter_spec, full_state_dict, gathered, weight_entries
from rlhf_dist.weight_sync.buckets import Bucket, TensorMeta, WeightLayout, plan_buckets
from rlhf_dist.weight_sync.channels import LearnerSender
from rlhf_dist.weight_sync.transports import LearnerRoute


class Learner:
    def __init__(
        self,
        cfg: RunConfig,
        model_path: str,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        critic_path: str | None = None,
    ):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.backend = init_learner_world(rank, world_size, master_addr, master_port)
        self.device = torch.device("cuda", 0) if self.backend == "nccl" else torch.device("cpu")
        torch.manual_seed(cfg.seed)
        self.zero3 = cfg.learner.zero_stage == 3
        policy = load_causal_lm(model_path, cfg.model.dtype, cfg.model.trust_remote_code)
        if cfg.learner.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        if cfg.learner.lora.enabled:
            policy = with_lora(policy, cfg.learner.lora, "CAUSAL_LM")
        self.policy = self._engine(policy, cfg.learner.optimizer.lr)
        self.critic = None
        if cfg.algorithm.name == "ppo":
            critic = CriticModel.build(critic_path or model_path, from_reward_model=critic_path is not None)
            disable_dropout(critic)
            critic.backbone.config.use_cache = False  # never generates; a cache would defeat checkpointing
            if cfg.learner.gradient_checkpointing:
                enable_gradient_checkpointing(critic.backbone)
            self.critic = self._engine(critic.to(policy.dtype), cfg.learner.optimizer.critic_lr)
        self.temperature = cfg.rollout.sampling.temperature
        self.is_correction = resolve_is_correction(cfg.algorithm.is_correction, cfg.rollout.async_steps)
        self._sender: LearnerSender | None = None
        self._positions = [0, 0]  # (padding, all) positions of the policy's forward passes in train()

    def _engine(self, model: torch.nn.Module, lr: float):
        """A DeepSpeed engine whose LR follows the configured schedule over the run's optimizer steps."""
        schedule = schedule_from_config(self.cfg.learner.optimizer, rl_optimizer_steps(self.cfg))
        return build_engine(model, self.cfg.learner, self.cfg.model.dtype, lr, self.world_size, schedule)

    @contextlib.contextmanager
    def _train_mode(self):
        """Train mode for the updates (transformers checkpoints activations only in train mode);
        eval mode otherwise. Dropout is 0 either way (set at load), so log-probs do not change."""
        engines = [engine for _, engine in self._engines()]
        for engine in engines:
            engine.train()
        try:
            yield
        finally:
            for engine in engines:
                engine.eval()

    # -- forward passes -------------------------------------------------------------------------

    def _micro_batches(self, exp: Experience) -> list[MicroBatch]:
        """Fixed-size micro-batches, or token-budget ones (``learner.max_tokens_per_micro_batch``).
        Every rank gets as many: under ZeRO each forward and backward is a collective."""
        learner = self.cfg.learner
        return plan_micro_batches(
            exp.prompt_mask, exp.response_mask, learner.micro_batch_size, learner.max_tokens_per_micro_batch,
            agree=self._max_over_ranks,
        )

    def _max_over_ranks(self, count: int) -> int:
        return int(all_reduce([count], "max", self.world_size, self.device, torch.long)[0])

    def _logprobs(self, exp: Experience, with_entropy: bool = False):
        padding, total = padded_positions(exp.prompt_mask, exp.response_mask)
        self._positions[0] += padding
        self._positions[1] += total
        return response_logprobs(
            self.policy, *_tokens(exp, self.device), temperature=self.temperature, with_entropy=with_entropy
        )

    @torch.no_grad()
    def logprobs(self, exp: Experience) -> torch.Tensor:
        """(B, T) log-probs of the sampled tokens under the current policy (0 past each micro-batch's
        longest response, where the budget trims; entries outside the response mask mean nothing)."""
        out = torch.zeros(exp.response_ids.shape)
        for part in self._micro_batches(exp):
            part.put(out, self._logprobs(part.take(exp))[0].cpu())
        return out

    @torch.no_grad()
    def values(self, exp: Experience) -> torch.Tensor:
        """(B, T) critic values V(s_t) of the state before each response token (PPO only)."""
        assert self.critic is not None, "values() needs algorithm.name=ppo"
        out = torch.zeros(exp.response_ids.shape)
        for part in self._micro_batches(exp):
            out_part = self.critic(*_tokens(part.take(exp), self.device))
            part.put(out, out_part.float().cpu())
        return out

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """Log-probs (temperature 1) of tokens 1.. of ``token_ids`` given their prefixes."""
        return probe_logprobs(self.policy, token_ids, self.device)

    # -- training -------------------------------------------------------------------------------

    def train(self, shard: Experience, kl_coef: float) -> TrainStats:
        """PPO epochs x mini-batches over this rank's shard; returns this rank's `TrainStats`.

        The PPO ratio is taken against the proximal policy: the learner's log-probs before this
        update (``shard.old_logprobs`` when the driver computed them, async; else computed here).
        The rollout engine's log-probs are the behaviour policy, corrected for by importance
        weights (``algorithm.is_correction``) on the policy-gradient term (Hilton et al. 2021).
        """
        self._positions = [0, 0]
        per_rank_mini = self.cfg.learner.mini_batch_size // self.world_size
        algo = self.cfg.algorithm
        self._tally = tally = StepTally(self.is_correction, algo.is_cap, algo.is_level)
        weights = None
        if not from_training_pass(shard, self.cfg.learner.epochs, per_rank_mini):
            if shard.old_logprobs is None:
                shard = dataclasses.replace(shard, old_logprobs=self.logprobs(shard))
            weights = tally.add(shard.old_logprobs, shard)
        stats: dict[str, list[float]] = {}
        with self._train_mode():
            for _ in range(self.cfg.learner.epochs):
                for start in range(0, shard.batch_size, per_rank_mini):
                    rows = slice(start, start + per_rank_mini)
                    part_weights = weights[rows] if weights is not None else None
                    for name, value in self._train_mini_batch(shard.select(rows), part_weights, kl_coef).items():
                        stats.setdefault(name, []).append(value)
        means = {name: sum(v) / len(v) for name, v in stats.items()}
        means.update(_last_values(stats))
        means["train/padding_frac"] = self._padding_frac()
        return TrainStats(
            means=means,
            response_tokens=float(shard.action_mask.sum()),
            logprob_abs_diff_sum=tally.diff_sum,
            logprob_abs_diff_max=tally.diff_max,
            importance=tally.importance if self.is_correction != "none" else None,
            # since the process began: the engine, the passes, this step
            memory_peak_bytes=float(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None,
        )

    def _padding_frac(self) -> float:
        """Share of padding among the positions of this step's policy forward passes, all ranks."""
        padding, total = all_reduce(self._positions, "sum", self.world_size, self.device)
        return padding / total if total > 0 else 0.0

    def _global_counts(self, mini: Experience) -> tuple[float, float]:
        """Response tokens and non-empty sequences in this mini-batch across all ranks."""
        counts = [mini.loss_mask.sum().item(), (mini.loss_mask.sum(-1) > 0).sum().item()]
        tokens, sequences = all_reduce(counts, "sum", self.world_size, self.device)
        return float(tokens), float(sequences)

    def _train_mini_batch(self, mini: Experience, is_weights: torch.Tensor | None, kl_coef: float) -> dict[str, float]:
        """One optimizer step: a backward per micro-batch, gradients accumulated, then the step.

        The accumulation boundary is set by hand (not counted by DeepSpeed against its configured
        gradient_accumulation_steps), because token-budget micro-batches vary in number per step.
        """
        num_tokens, num_seqs = self._global_counts(mini)
        # DeepSpeed averages gradients over ranks; our losses are already divided by the global
        # count, so scale by the world size to get the gradient of one big batch.
        scale = float(self.world_size)
        stats = MicroBatchStats()
        nonfinite = 0.0
        parts = self._micro_batches(mini)
        for i, part in enumerate(parts):
            for _, engine in self._engines():
                engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
            mb = part.take(mini)
            weights = part.cut(is_weights) if is_weights is not None else None
            step_stats, finite = self._policy_micro_step(mb, weights, bool(part.rows), kl_coef, num_tokens, num_seqs, scale)
            nonfinite = max(nonfinite, float(not finite))
            if self.critic is not None:
                critic_stats, critic_finite = self._critic_micro_step(mb, num_tokens, num_seqs, scale)
                step_stats = step_stats | critic_stats
                nonfinite = max(nonfinite, float(not critic_finite))  # counts toward max_nonfinite_steps too
            stats.add(step_stats, tokens=float(mb.loss_mask.sum()))
        lrs = {"train/lr": self.policy.get_lr()[0]}  # read before step() advances the schedule
        self.policy.step()
        if self.critic is not None:
            lrs["train/critic_lr"] = self.critic.get_lr()[0]
            self.critic.step()
        grad_norm = self.policy.get_global_grad_norm()
        out = self._across_ranks(stats)
        out.update(lrs)
        # A NaN/inf loss gives non-finite gradients, which DeepSpeed's overflow check (all-reduced
        # over the ranks) turns into a skipped optimizer step on every rank alike.
        out["train/nonfinite_loss"] = nonfinite
        skipped = not self.policy.was_step_applied() or (self.critic is not None and not self.critic.was_step_applied())
        out["train/skipped_updates"] = float(skipped)
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            out["policy/grad_norm"] = float(grad_norm)
        return out

    def _across_ranks(self, stats: MicroBatchStats) -> dict[str, float]:
        """The mini-batch's statistics over all ranks: the same on every rank, whatever the grouping."""
        summed, maxed = stats.vectors()
        summed = all_reduce(summed, "sum", self.world_size, self.device)
        maxed = all_reduce([*maxed, 0.0], "max", self.world_size, self.device)[:-1]  # never an empty collective
        return stats.result(summed, maxed)

    def _policy_micro_step(
        self, mb: Experience, is_weights: torch.Tensor | None, real: bool, kl_coef: float, num_tokens: float,
        num_seqs: float, scale: float,
    ) -> tuple[MicroStats, bool]:
        """One micro-batch's policy loss and backward; returns its statistics and whether the loss was finite.
        Without ``mb.old_logprobs`` this pass is the proximal one (`proximal.py`): its own log-probs,
        detached, and ``real`` rows (not a stand-in pass) count in the step's tally."""
        algo = self.cfg.algorithm
        mask = mb.loss_mask.to(self.device)
        logp, entropy = self._logprobs(mb, with_entropy=True)
        if mb.old_logprobs is None:
            old = logp.detach()
            counted = self._tally.add(old, mb) if real else None
            is_weights = counted if real else torch.ones_like(old)
        else:
            old = mb.old_logprobs.to(self.device)
        weights = is_weights.to(self.device) if self.is_correction != "none" else None
        loss, pstats = ppo_policy_loss(
            logp, old, mb.advantages.to(self.device), mask,
            algo.clip_low, algo.clip_high, algo.loss_agg, num_tokens, num_seqs, weights=weights,
        )
        stats = MicroStats(
            summed={"policy/loss": float(loss.detach())},
            weighted={f"policy/{k}": float(v) for k, v in pstats.items() if k != "ratio_max"},
            maxima={"policy/ratio_max": float(pstats["ratio_max"])},
        )
        stats.weighted["policy/entropy"] = float(masked_mean(entropy.detach(), mask))
        if algo.kl.mode == "loss" and mb.ref_logprobs is not None:
            kl = kl_estimate(logp, mb.ref_logprobs.to(self.device), algo.kl.kind, mask)
            kl_loss = aggregate_loss(kl, mask, algo.loss_agg, num_tokens, num_seqs)
            loss = loss + kl_coef * kl_loss
            stats.summed["policy/kl_loss"] = float(kl_loss.detach())
        finite = bool(torch.isfinite(loss.detach()).item())
        self.policy.backward(loss * scale, scale_wrt_gas=False)
        return stats, finite

    def _critic_micro_step(
        self, mb: Experience, num_tokens: float, num_seqs: float, scale: float
    ) -> tuple[MicroStats, bool]:
        """One micro-batch's value loss and backward; returns its statistics and whether the loss was finite."""
        algo = self.cfg.algorithm
        prompt_ids, prompt_mask, response_ids, response_mask = _tokens(mb, self.device)
        values = self.critic(prompt_ids, prompt_mask, response_ids, response_mask).float()
        loss, vstats = value_loss(
            values, mb.values.to(self.device), mb.returns.to(self.device), mb.loss_mask.to(self.device),
            algo.value_clip, algo.loss_agg, num_tokens, num_seqs,
        )
        finite = bool(torch.isfinite(loss.detach()).item())
        self.critic.backward(loss * scale, scale_wrt_gas=False)
        return MicroStats(summed={"critic/value_loss": float(loss.detach())},
                          weighted={f"critic/{k}": float(v) for k, v in vstats.items()}), finite

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """All ranks call this: DeepSpeed state (weights, optimizer, scheduler, counters) of the
        policy and critic, each rank's partition in safetensors, plus this rank's RNG state."""
        root = Path(ckpt_dir)
        for name, engine in self._engines():
            engine.save_checkpoint(str(root / name), tag="state")
        (root / "rng").mkdir(parents=True, exist_ok=True)
        save_tree(rng_state(), root / "rng" / f"learner-{self.rank}.safetensors")

    def load_checkpoint(self, ckpt_dir: str) -> None:
        root = Path(ckpt_dir)
        for name, engine in self._engines():
            path, _ = engine.load_checkpoint(
                str(root / name), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if path is None:
                raise CheckpointError(f"{root / name} holds no DeepSpeed state for the {name}; the checkpoint is incomplete")
        set_rng_state(load_tree(root / "rng" / f"learner-{self.rank}.safetensors"))

    def _engines(self):
        yield "policy", self.policy
        if self.critic is not None:
            yield "critic", self.critic

    # -- weights out ----------------------------------------------------------------------------

    def weight_layout(self, bucket_bytes: int) -> WeightLayout:
        """What each sync sends: the policy's weights, or with LoRA only its adapter (the
        generators keep the base weights, which LoRA never changes)."""
        metas = [TensorMeta(e.name, e.shape, e.dtype) for e in self._sync_entries()]
        adapter = adapter_spec(self.policy.module) if self.cfg.learner.lora.enabled else None
        return WeightLayout(tuple(plan_buckets(metas, bucket_bytes)), adapter)

    def _sync_entries(self):
        module = self.policy.module
        return adapter_entries(module) if self.cfg.learner.lora.enabled else weight_entries(module)

    def init_weight_sync(self, route: LearnerRoute, generation: int) -> bool:
        """Open what this rank sends through (`rlhf_dist.weight_sync.transports.sync_routes`): rank 0 serves
        the store and is rank 0 of each group; a rank with an engine on its GPU gets an IPC channel."""
        # A rebuild (a generator was restarted) reuses the store this rank already serves or joined.
        store = self._sender.store if self._sender is not None else None
        self._sender = LearnerSender(route, generation, store)
        return True

    @torch.no_grad()
    def broadcast_weights(self, buckets: list[Bucket], probe_ids: list[int]) -> tuple[list[int], list[float]]:
        """All ranks call this; rank 0 sends every bucket to the groups, and each rank with an
        engine on its GPU hands it the same buckets by CUDA IPC.

        Returns the checksums this rank sent ([] if it sent nothing) and the policy's log-probs on
        the probe, which the driver compares with each generator's after it loaded the weights.
        """
        by_name = {e.name: e for e in self._sync_entries()}
        sends = self._sender is not None and self._sender.sends
        sums = []
        for bucket in buckets:
            entries = [by_name[m.name] for m in bucket.tensors]
            with gathered([p for e in entries for p in e.params], self.zero3):
                if sends:
                    sums.append(self._sender.send_bucket([e.compute().to(bucket.dtype) for e in entries]))
        if sends and self.device.type == "cuda":
            torch.cuda.ipc_collect()  # free the buffers the engines have released
        return sums, self.probe_logprobs(probe_ids)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """All ranks call this; rank 0 gets the merged Hugging Face state dict, the others {}."""
        return full_state_dict(self.policy.module, self.zero3, self.rank)

    def save_pretrained(self, out_dir: str, tokenizer_path: str) -> str | None:
        """All ranks call this; rank 0 writes a Hugging Face model directory (merged if LoRA)."""
        state = self.full_state_dict()
        if self.rank != 0:
            return None

        return str(write_hf_model(Path(out_dir), self.policy.module, state, tokenizer_path,
                                  chat_template=self.cfg.data.chat_template))


def _last_values(stats: dict[str, list[float]]) -> dict[str, float]:
    """LRs are not averaged: ``train/lr`` is the LR the last optimizer step used."""
    return {name: stats[name][-1] for name in ("train/lr", "train/critic_lr") if name in stats}


def _tokens(exp: Experience, device: torch.device):
    return (
        exp.prompt_ids.to(device),
        exp.prompt_mask.to(device),
        exp.response_ids.to(device),
        exp.response_mask.to(device),
    )
