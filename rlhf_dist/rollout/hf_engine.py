"""The transformers rollout engine, for where vLLM cannot run (the GPU machine here, odd architectures).

It samples from the temperature-scaled distribution (logits / T, then top-k/top-p filtering when
those are on) and returns the log-probs of that distribution, as vLLM's ``processed_logprobs`` mode does.
"""

from __future__ import annotations

import torch

from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.models.loading import load_causal_lm, load_tokenizer
from rlhf_dist.models.sequences import left_pad, probe_logprobs
from rlhf_dist.rollout.requests import Request, Sample
from rlhf_dist.rollout.spec import EngineSpec
from rlhf_dist.weight_sync.adapters import load_into_peft
from rlhf_dist.weight_sync.buckets import WeightLayout
from rlhf_dist.weight_sync.channels import open_receiver
from rlhf_dist.weight_sync.controller import WeightSyncError
from rlhf_dist.weight_sync.group import SyncGroup
from rlhf_dist.weight_sync.ipc import IpcReceiver
from rlhf_dist.weight_sync.transports import GeneratorRoute


class HFEngine:
    """Sampling with a transformers model: a plain loop with a KV cache and per-request seeds.

    With LoRA on, the first adapter sync wraps the model with peft; every sync loads into it.
    """

    def __init__(self, spec: EngineSpec):
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_causal_lm(spec.model_path, spec.dtype, spec.trust_remote_code).to(self.device).eval()
        self.tokenizer = load_tokenizer(spec.tokenizer_path, spec.trust_remote_code)
        self.batch_size = 64
        self._sync: SyncGroup | IpcReceiver | None = None

    def sleep(self) -> None:
        """No-op: transformers keeps no cache between calls; colocation is a vLLM feature."""

    def wake_up(self) -> None:
        """No-op, as `sleep`."""

    @torch.no_grad()
    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Sample]:
        samples = []
        for start in range(0, len(requests), self.batch_size):
            samples.extend(self._generate_batch(requests[start : start + self.batch_size], sampling))
        return samples

    def _generate_batch(self, requests: list[Request], sampling: SamplingConfig) -> list[Sample]:
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        ids, mask = left_pad([r.prompt_ids for r in requests], pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        generators = [torch.Generator(device=self.device).manual_seed(r.seed) for r in requests]
        done = torch.zeros(len(requests), dtype=torch.bool, device=self.device)
        caps = [min(sampling.max_new_tokens, r.max_tokens or sampling.max_new_tokens) for r in requests]
        capped = torch.tensor(caps, device=self.device)
        tokens, logps = [], []
        past, step_ids = None, ids
        for k in range(max(caps)):
            positions = (mask.cumsum(1) - 1).clamp_min(0)[:, -step_ids.shape[1]:]
            out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
            past = out.past_key_values
            log_probs = _processed_logprobs(out.logits[:, -1].float(), sampling)
            if sampling.temperature == 0:  # greedy (eval): the most likely token, no sampling
                nxt = log_probs.argmax(-1)
            else:
                probs = log_probs.exp()
                nxt = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])
            tokens.append(torch.where(done, pad, nxt))
            logps.append(log_probs.gather(-1, nxt[:, None])[:, 0])
            done = done | (nxt == eos) | (capped <= k + 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids = nxt[:, None]
            if done.all():
                break
        token_rows, logp_rows = torch.stack(tokens, 1).tolist(), torch.stack(logps, 1).tolist()
        samples = []
        for request, row, lp, cap in zip(requests, token_rows, logp_rows, caps):
            row = row[:cap]
            length = row.index(eos) + 1 if eos in row else len(row)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            samples.append(Sample(request.prompt_index, request.sample_index, row[:length], lp[:length], text,
                                  truncated=eos not in row[:length]))
        return samples

    def init_weight_sync(self, route: GeneratorRoute, generation: int) -> None:
        self._sync = open_receiver(route, generation)

    @torch.no_grad()
    def receive_weights(self, layout: WeightLayout) -> tuple[list[int], int]:
        """Receive and load a sync; returns the checksums and the bytes received."""
        if self._sync is None:
            raise WeightSyncError("receive_weights before init_weight_sync: the sync group is not open")
        named, sums = self._sync.receive_all(layout.buckets, self.device)
        if layout.adapter is not None:
            if not hasattr(self.model, "peft_config"):
                from peft import get_peft_model

                self.model = get_peft_model(self.model, layout.adapter.lora_config()).eval()
            load_into_peft(self.model, named)
        else:
            params = dict(self.model.named_parameters())
            for name, tensor in named:
                params[name].copy_(tensor)
        return sums, sum(t.nbytes for _, t in named)

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return probe_logprobs(self.model, token_ids, self.device)


def _processed_logprobs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """log softmax(logits / T) after top-k / top-p filtering (filtered tokens get -inf); T = 0
    (greedy) leaves the logits unscaled."""
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, -1) > sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.log_softmax(logits, dim=-1)
