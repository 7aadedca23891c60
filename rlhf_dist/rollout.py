"""Rollout engines: vLLM, and transformers where vLLM cannot run. Both return the same `Sample`s.

Log-probs are of the temperature-scaled distribution (logits / T, then top-k/top-p filtering when
those are on): vLLM's ``processed_logprobs`` mode, and the same computation in `HFEngine`. The
learner divides its logits by the same temperature, so with plain sampling (top_p=1, top_k off)
both sides compute one distribution and their difference is numerical noise.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from rlhf_dist.config.schema import RunConfig, SamplingConfig
from rlhf_dist.adapters import AdapterVersions, load_into_peft, vllm_max_lora_rank
from rlhf_dist.sync_channels import IpcReceiver, open_receiver
from rlhf_dist.sync_transport import GeneratorRoute
from rlhf_dist.weight_sync import SyncGroup, WeightLayout, WeightSyncError


@dataclass
class Request:
    prompt_index: int  # dataset index of the prompt
    sample_index: int  # 0 .. samples_per_prompt - 1
    prompt_ids: list[int]
    seed: int


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    response_ids: list[int]  # includes the eos token when the model stopped by itself
    logprobs: list[float]  # one per response token
    text: str  # decoded response without special tokens
    truncated: bool = False  # cut off at max_new_tokens rather than stopped by the model


def request_seed(run_seed: int, step: int, prompt_index: int, sample_index: int, stream: str = "") -> int:
    """A sampling seed fixed by (run, step, prompt, sample): reruns and resumes sample the same.
    ``stream`` keeps other samplers of the same step apart (``"eval"``); "" is the training stream."""
    key = f"{run_seed}/{step}/{prompt_index}/{sample_index}" + (f"/{stream}" if stream else "")
    digest = hashlib.blake2b(key.encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF


class VLLMEngine:
    """vLLM's offline `LLM`, with a worker extension that receives weights over the sync group.

    With LoRA on, the engine serves the base model plus the latest adapter (``lora_request``);
    before the first sync the adapter is zero, which is the base model itself.
    """

    def __init__(self, model_path: str, cfg: RunConfig, seed: int):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.rollout.kv_cache_gib))))
        if not torch.cuda.is_available():
            # Engine and worker in this process: seconds to start instead of a minute on CPU.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        # Colocated with the learners, the engine frees its GPU memory while they train. Sleep
        # mode is a GPU feature (on CPU vLLM accepts the calls and does nothing).
        self.sleep_mode = cfg.placement.colocate and torch.cuda.is_available()
        self.asleep = False
        tp = cfg.rollout.tensor_parallel_size
        self.lora_request = None
        lora_args = {}
        if cfg.learner.lora.enabled:  # adapter-only sync: every version arrives as an adapter
            self.adapters = AdapterVersions()
            # One adapter serves at a time; the CPU cache holds the new one beside the old until eviction.
            lora_args = dict(enable_lora=True, max_lora_rank=vllm_max_lora_rank(cfg.learner.lora.r), max_loras=1, max_cpu_loras=2)
        self.llm = LLM(
            model=model_path,
            tokenizer=cfg.model.tokenizer or model_path,
            dtype=cfg.model.dtype,
            seed=seed,
            max_model_len=cfg.rollout.max_model_len,
            enforce_eager=not torch.cuda.is_available(),
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rlhf_dist.sync_channels.VLLMWorkerExtension",
            trust_remote_code=cfg.model.trust_remote_code,
            enable_sleep_mode=self.sleep_mode,
            # The actor holds its engine's GPUs in one placement bundle (rlhf_dist/placement.py):
            # tensor-parallel ranks are local processes, not Ray actors of their own.
            **({"distributed_executor_backend": "mp"} if tp > 1 else {}),
            **lora_args,
        )

    def sleep(self) -> None:
        """Free GPU memory while colocated learners train: level 1 offloads the weights to CPU
        memory and drops the KV cache. A no-op unless sleep mode is on (colocated, with CUDA)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        """Take the GPU memory back before the next weight sync; a no-op when not asleep."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Sample]:
        if torch.cuda.is_available():
            return self._generate(requests, sampling)
        # vLLM's CPU build cannot rewind a seeded request's generator when the scheduler splits a
        # prefill over steps ("CPU Generator does not use offset"), which happens once the prompts
        # of one call exceed a step's token budget. Calls whose prompts fit in one step never split.
        sched = self.llm.llm_engine.vllm_config.scheduler_config
        return [s for part in prefill_batches(requests, sched.max_num_seqs, sched.max_num_batched_tokens)
                for s in self._generate(part, sampling)]

    def _generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Sample]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else 0,
                max_tokens=sampling.max_new_tokens,
                logprobs=0,
                seed=r.seed,
            )
            for r in requests
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": r.prompt_ids} for r in requests], params, use_tqdm=False, lora_request=self.lora_request
        )
        samples = []
        for request, output in zip(requests, outputs):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            samples.append(Sample(request.prompt_index, request.sample_index, ids, logprobs, completion.text,
                                  truncated=completion.finish_reason == "length"))
        return samples

    def init_weight_sync(self, route: GeneratorRoute, generation: int) -> None:
        """Each worker opens its end of the route: a group rank, or the CUDA IPC channel."""
        self.llm.collective_rpc("init_weight_sync", args=(route, generation))

    def receive_weights(self, layout: WeightLayout) -> tuple[list[int], int]:
        """Receive and load a sync; returns the checksums and the bytes received."""
        if layout.adapter is None:
            sums, nbytes = self.llm.collective_rpc("receive_weights", args=(layout,))[0]
        else:
            sums, nbytes = self._receive_adapter(layout)
        # Cached prefixes hold KV computed with the old weights.
        self.llm.reset_prefix_cache()
        return sums, nbytes

    def _receive_adapter(self, layout: WeightLayout) -> tuple[list[int], int]:
        """The worker writes the adapter to a directory of its own; registered under a new id, it
        replaces the previous version, which is evicted and deleted."""
        from vllm.lora.request import LoRARequest

        lora_id, path = self.adapters.next()
        sums, nbytes = self.llm.collective_rpc("receive_weights", args=(layout, str(path)))[0]
        request = LoRARequest(f"policy-{lora_id}", lora_id, str(path))
        self.llm.llm_engine.add_lora(request)  # loaded now: a bad adapter fails the sync, not a later generate
        previous, self.lora_request = self.lora_request, request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            self.adapters.drop(previous.lora_path)
        return sums, nbytes

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """Log-probs (temperature 1) of tokens 1.. of ``token_ids`` given their prefixes."""
        from vllm import SamplingParams

        out = self.llm.generate(
            [{"prompt_token_ids": token_ids}],
            SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0),
            use_tqdm=False,
            lora_request=self.lora_request,
        )[0]
        return [step[token].logprob for step, token in zip(out.prompt_logprobs[1:], token_ids[1:])]


class HFEngine:
    """Sampling with a transformers model: a plain loop with a KV cache and per-request seeds.

    With LoRA on, the first adapter sync wraps the model with peft; every sync loads into it.
    """

    def __init__(self, model_path: str, cfg: RunConfig, seed: int):
        from rlhf_dist.models import load_causal_lm, load_tokenizer

        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_causal_lm(model_path, cfg.model.dtype, cfg.model.trust_remote_code).to(self.device).eval()
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or model_path, cfg.model.trust_remote_code)
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
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests], device=self.device)
        generators = [torch.Generator(device=self.device).manual_seed(r.seed) for r in requests]
        done = torch.zeros(len(requests), dtype=torch.bool, device=self.device)
        tokens, logps = [], []
        past, step_ids = None, ids
        for _ in range(sampling.max_new_tokens):
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
            done = done | (nxt == eos)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids = nxt[:, None]
            if done.all():
                break
        token_rows, logp_rows = torch.stack(tokens, 1).tolist(), torch.stack(logps, 1).tolist()
        samples = []
        for request, row, lp in zip(requests, token_rows, logp_rows):
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
        ids = torch.tensor([token_ids], device=self.device)
        logits = self.model(input_ids=ids).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].cpu().tolist()


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


def prefill_batches(requests: list[Request], max_seqs: int, max_tokens: int) -> list[list[Request]]:
    """Consecutive runs of ``requests`` with at most ``max_seqs`` requests and ``max_tokens`` prompt
    tokens each (a prompt longer than ``max_tokens`` alone gets a run of its own)."""
    batches: list[list[Request]] = []
    current: list[Request] = []
    tokens = 0
    for r in requests:
        if current and (len(current) == max_seqs or tokens + len(r.prompt_ids) > max_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(r)
        tokens += len(r.prompt_ids)
    if current:
        batches.append(current)
    return batches


def make_engine(model_path: str, cfg: RunConfig, seed: int) -> VLLMEngine | HFEngine:
    return VLLMEngine(model_path, cfg, seed) if cfg.rollout.engine == "vllm" else HFEngine(model_path, cfg, seed)
