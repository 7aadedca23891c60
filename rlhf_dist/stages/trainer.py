"""SFT, reward-model and DPO training on one rank of a DeepSpeed world (the PPO learner's machinery).

`actors/stage.py` wraps `StageTrainer` in a Ray actor; rlhf_dist/stages/epochs.py shards the examples
over the ranks and calls every rank at once. Losses are sums over this rank's examples divided by
the global count of the mini-batch (tokens for SFT, pairs for RM and DPO), so gradients equal
those of one big batch whatever the number of ranks and micro-batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_dist.algorithms import bradley_terry_loss, dpo_loss
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.learner.collectives import all_reduce
from rlhf_dist.learner.engine import build_engine, init_learner_world
from rlhf_dist.learner.lr_schedule import schedule_from_config, stage_optimizer_steps
from rlhf_dist.models.loading import DTYPES, disable_dropout, enable_gradient_checkpointing, load_causal_lm
from rlhf_dist.models.lora import with_lora
from rlhf_dist.models.saving import write_hf_model
from rlhf_dist.models.sequences import left_pad, response_logprobs, right_pad, sequence_scores
from rlhf_dist.models.weights import full_state_dict
from rlhf_dist.stages.stage_data import PairExample, SFTExample

KINDS = ("sft", "rm", "dpo")


class StageTrainer:
    def __init__(self, kind: str, cfg: StageConfig, model_path: str, pad_id: int, rank: int, world_size: int, addr: str, port: int):
        assert kind in KINDS, kind
        self.kind, self.cfg, self.pad, self.rank, self.world_size = kind, cfg, pad_id, rank, world_size
        self.backend = init_learner_world(rank, world_size, addr, port)
        self.device = torch.device("cuda", 0) if self.backend == "nccl" else torch.device("cpu")
        torch.manual_seed(cfg.seed)
        self.zero3 = cfg.learner.zero_stage == 3
        if kind == "rm":
            from transformers import AutoModelForSequenceClassification

            model = disable_dropout(AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=1, dtype=DTYPES[cfg.model.dtype], trust_remote_code=cfg.model.trust_remote_code,
            ))
            model.config.pad_token_id = pad_id
            model.config.use_cache = False
            task = "SEQ_CLS"
        else:
            model = load_causal_lm(model_path, cfg.model.dtype, cfg.model.trust_remote_code)
            task = "CAUSAL_LM"
        if cfg.learner.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.lora = cfg.learner.lora.enabled
        if self.lora:
            model = with_lora(model, cfg.learner.lora, task)
        # The horizon depends on the training set, which arrives with the first epoch (train_epoch);
        # until then no optimizer step has been taken, and the LR at step 0 does not depend on it.
        self.schedule = schedule_from_config(cfg.learner.optimizer, total_steps=0)
        self._horizon_known = False
        self.engine = build_engine(model, cfg.learner, cfg.model.dtype, cfg.learner.optimizer.lr, world_size, self.schedule)
        # DPO's frozen reference: the LoRA-disabled base, or a plain copy of the starting model.
        self.reference = None
        if kind == "dpo" and not self.lora:
            self.reference = load_causal_lm(model_path, cfg.model.dtype, cfg.model.trust_remote_code)
            self.reference = self.reference.to(self.device).eval().requires_grad_(False)

    # -- per-kind forward passes (micro-batch) ---------------------------------------------------

    def _response_logprob_sums(self, model, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        prompt_ids, prompt_mask = left_pad(prompts, self.pad)
        response_ids, response_mask = right_pad(responses, self.pad)
        dev = self.device
        logp, _ = response_logprobs(model, prompt_ids.to(dev), prompt_mask.to(dev), response_ids.to(dev), response_mask.to(dev))
        return torch.where(response_mask.to(dev).bool(), logp, 0.0).sum(-1)

    def _rm_scores(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        # The reward model reads prompt + response without the eos (as the scorer does at PPO time).
        ids, mask = right_pad([p + r[:-1] for p, r in zip(prompts, responses)], self.pad)
        model = self.engine.module
        return sequence_scores(model, ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def reference_logprobs(self, pairs: list[PairExample]) -> list[tuple[float, float]]:
        """DPO: summed response log-probs under the frozen reference, computed once before training."""
        out = []
        size = self.cfg.learner.micro_batch_size
        for start in range(0, len(pairs), size):
            mb = pairs[start : start + size]
            prompts = [p.prompt_ids for p in mb]
            if self.reference is not None:
                chosen = self._response_logprob_sums(self.reference, prompts, [p.chosen_ids for p in mb])
                rejected = self._response_logprob_sums(self.reference, prompts, [p.rejected_ids for p in mb])
            else:
                with self.engine.module.disable_adapter():
                    chosen = self._response_logprob_sums(self.engine, prompts, [p.chosen_ids for p in mb])
                    rejected = self._response_logprob_sums(self.engine, prompts, [p.rejected_ids for p in mb])
            out.extend(zip(chosen.tolist(), rejected.tolist()))
        return out

    def _micro_loss(self, mb: list, ref: list | None, denominator: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch, already divided by the global ``denominator``."""
        if self.kind == "sft":
            prompts = [e.prompt_ids for e in mb]
            response_ids, response_mask = right_pad([e.response_ids for e in mb], self.pad)
            prompt_ids, prompt_mask = left_pad(prompts, self.pad)
            dev = self.device
            logp, _ = response_logprobs(self.engine, prompt_ids.to(dev), prompt_mask.to(dev), response_ids.to(dev), response_mask.to(dev))
            nll = torch.where(response_mask.to(dev).bool(), -logp, 0.0).sum()
            return nll / denominator, {"nll_sum": float(nll.detach())}
        prompts = [p.prompt_ids for p in mb]
        if self.kind == "rm":
            r_c = self._rm_scores(prompts, [p.chosen_ids for p in mb])
            r_r = self._rm_scores(prompts, [p.rejected_ids for p in mb])
            loss, stats = bradley_terry_loss(r_c, r_r)
            margins = (r_c - r_r).detach()
        else:
            pi_c = self._response_logprob_sums(self.engine, prompts, [p.chosen_ids for p in mb])
            pi_r = self._response_logprob_sums(self.engine, prompts, [p.rejected_ids for p in mb])
            ref_c = torch.tensor([c for c, _ in ref], device=self.device)
            ref_r = torch.tensor([r for _, r in ref], device=self.device)
            loss, stats = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.cfg.beta)
            margins = self.cfg.beta * ((pi_c - ref_c) - (pi_r - ref_r)).detach()
            stats["logratio_sum"] = ((pi_c - ref_c) + (pi_r - ref_r)).detach().sum() / 2
            stats["policy_prefers_chosen"] = (pi_c > pi_r).float().sum()
        n = len(mb)
        summed = {"loss_sum": float(loss.detach()) * n, "correct": float((margins > 0).sum()), "margin_sum": float(margins.sum())}
        summed.update({k: float(v) for k, v in stats.items() if k in ("logratio_sum", "policy_prefers_chosen")})
        return loss * n / denominator, summed

    def _count(self, mb: list) -> float:
        return float(sum(len(e.response_ids) for e in mb)) if self.kind == "sft" else float(len(mb))

    # -- training and evaluation ----------------------------------------------------------------

    def train_epoch(self, examples: list[SFTExample | PairExample], ref: list | None = None) -> dict[str, float]:
        """One pass over this rank's examples; returns sums to be added up over ranks."""
        per_rank = self.cfg.learner.mini_batch_size // self.world_size
        micro = self.cfg.learner.micro_batch_size
        totals: dict[str, float] = {}
        scale = float(self.world_size)  # DeepSpeed averages gradients over ranks
        # Whole mini-batches only, and as many as the smallest shard holds, so every rank takes
        # the same number of optimizer steps (shards of an uneven split differ by one example).
        usable = self._global_min(len(examples)) // per_rank * per_rank
        if not self._horizon_known:
            self.schedule.total_steps = stage_optimizer_steps(usable, per_rank, self.cfg.epochs)
            self._horizon_known = True
        self.engine.train()  # transformers checkpoints activations only in train mode
        try:
            for start in range(0, usable, per_rank):
                mini = examples[start : start + per_rank]
                denominator = self._global_sum(self._count(mini))
                for m in range(0, len(mini), micro):
                    mb = mini[m : m + micro]
                    mb_ref = ref[start + m : start + m + micro] if ref is not None else None
                    loss, sums = self._micro_loss(mb, mb_ref, denominator)
                    self.engine.backward(loss * scale, scale_wrt_gas=False)
                    self.engine.step()
                    sums["count"] = self._count(mb)
                    for k, v in sums.items():
                        totals[k] = totals.get(k, 0.0) + v
        finally:
            self.engine.eval()
        return totals

    @torch.no_grad()
    def evaluate(self, examples: list, ref: list | None = None) -> dict[str, list[float] | float]:
        """Sums over this rank's held-out examples, plus per-pair margins (RM) for calibration."""
        totals: dict[str, float] = {}
        margins: list[float] = []
        micro = self.cfg.learner.micro_batch_size
        for start in range(0, len(examples), micro):
            mb = examples[start : start + micro]
            mb_ref = ref[start : start + micro] if ref is not None else None
            _, sums = self._micro_loss(mb, mb_ref, 1.0)
            sums["count"] = self._count(mb)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + v
            if self.kind == "rm":
                prompts = [p.prompt_ids for p in mb]
                diff = self._rm_scores(prompts, [p.chosen_ids for p in mb]) - self._rm_scores(prompts, [p.rejected_ids for p in mb])
                margins.extend(diff.tolist())
        return {**totals, "margins": margins}

    @torch.no_grad()
    def score_responses(self, examples: list[PairExample]) -> list[float]:
        """RM: scores of the chosen and rejected responses (for the normalisation statistics)."""
        scores: list[float] = []
        micro = self.cfg.learner.micro_batch_size
        for start in range(0, len(examples), micro):
            mb = examples[start : start + micro]
            prompts = [p.prompt_ids for p in mb]
            scores += self._rm_scores(prompts, [p.chosen_ids for p in mb]).tolist()
            scores += self._rm_scores(prompts, [p.rejected_ids for p in mb]).tolist()
        return scores

    def _global_sum(self, value: float) -> float:
        return float(all_reduce([value], "sum", self.world_size, self.device)[0])

    def _global_min(self, value: int) -> int:
        return int(all_reduce([value], "min", self.world_size, self.device, torch.int64)[0])

    def save(self, out_dir: str, tokenizer_path: str) -> str | None:
        """All ranks call this; rank 0 writes a Hugging Face directory (LoRA merged)."""
        state = full_state_dict(self.engine.module, self.zero3, self.rank)
        if self.rank != 0:
            return None

        task = "rm" if self.kind == "rm" else "causal"
        return str(write_hf_model(Path(out_dir), self.engine.module, state, tokenizer_path, task=task,
                                  chat_template=self.cfg.data.chat_template))
