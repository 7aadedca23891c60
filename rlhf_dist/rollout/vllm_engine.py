"""The vLLM rollout engine (the CPU build here, the CUDA build on GPUs).

Log-probs are of the temperature-scaled distribution (logits / T, then top-k/top-p filtering when
those are on): vLLM's ``processed_logprobs`` mode. The learner divides its logits by the same
temperature, so with plain sampling (top_p=1, top_k off) both sides compute one distribution and their
difference is numerical noise.
"""

from __future__ import annotations

import gc
import os

import torch

from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.rollout.requests import Request, Sample, prefill_batches
from rlhf_dist.rollout.spec import EngineSpec
from rlhf_dist.weight_sync.adapters import AdapterVersions, vllm_max_lora_rank
from rlhf_dist.weight_sync.buckets import WeightLayout
from rlhf_dist.weight_sync.transports import GeneratorRoute

# vLLM's scheduler step on CPU, in tokens (its own CPU default is 4096): see `VLLMEngine._engine_args`.
CPU_STEP_TOKENS = 16384
# vLLM's KV block on CPU for multi-turn engines, in tokens (its CPU default is 128): see `VLLMEngine._engine_args`.
MULTI_TURN_BLOCK = 32


class VLLMEngine:
    """vLLM's offline `LLM`, with a worker extension that receives weights over the sync group.

    With LoRA on, the engine serves the base model plus the latest adapter (``lora_request``);
    before the first sync the adapter is zero, which is the base model itself.
    """

    def __init__(self, spec: EngineSpec):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(spec.kv_cache_gib))))
        if not torch.cuda.is_available():
            # Engine and worker in this process: seconds to start instead of a minute on CPU.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        # vLLM collects garbage while it starts, each pass over every object that importing torch and
        # vLLM made. Frozen, those objects are skipped: ~1.5 s less start-up CPU on the tiny model.
        gc.freeze()
        # Colocated with the learners, the engine frees its GPU memory while they train. Sleep
        # mode is a GPU feature (on CPU vLLM accepts the calls and does nothing).
        self.sleep_mode = spec.colocate and torch.cuda.is_available()
        self.asleep = False
        self.lora_request = None
        if spec.lora_rank is not None:  # adapter-only sync: every version arrives as an adapter
            self.adapters = AdapterVersions()
        self.llm = LLM(**self._engine_args(spec))

    def _engine_args(self, spec: EngineSpec) -> dict:
        """`vllm.LLM`'s arguments for ``spec``."""
        tp = spec.tensor_parallel_size
        args = dict(
            model=spec.model_path,
            tokenizer=spec.tokenizer_path,
            dtype=spec.dtype,
            seed=spec.seed,
            max_model_len=spec.max_model_len,
            enforce_eager=not torch.cuda.is_available(),
            tensor_parallel_size=tp,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rlhf_dist.weight_sync.vllm_worker.VLLMWorkerExtension",
            trust_remote_code=spec.trust_remote_code,
            enable_sleep_mode=self.sleep_mode,
        )
        if tp > 1:
            # The actor holds its engine's GPUs in one placement bundle (rlhf_dist/planning/placement.py):
            # tensor-parallel ranks are local processes, not Ray actors of their own.
            args["distributed_executor_backend"] = "mp"
        if spec.lora_rank is not None:
            # One adapter serves at a time; the CPU cache holds the new one beside the old until eviction.
            args.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(spec.lora_rank), max_loras=1, max_cpu_loras=2)
        if not torch.cuda.is_available():
            # A call is served in batches whose prompts fit one scheduler step (`generate`); a larger
            # step than vLLM's CPU default (4096 tokens) keeps a whole rollout call, and each turn call
            # of multi-turn trajectories (whose prompts hold every earlier turn), to one batch.
            args["max_num_batched_tokens"] = max(CPU_STEP_TOKENS, spec.max_model_len)
            if spec.multi_turn:
                # Prefix caching reuses whole KV blocks only. With vLLM's 128-token CPU blocks a turn's
                # prompt rarely shares one with the last, so every turn prefilled the whole conversation
                # again: 4 turns of 16 tokens cost 4x a single turn of 64 on a 20M model, 2x with
                # 32-token blocks (bench/multiturn.py). Single-turn keeps 128: its decode is faster.
                args["block_size"] = MULTI_TURN_BLOCK
        return args

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

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
                max_tokens=min(sampling.max_new_tokens, r.max_tokens or sampling.max_new_tokens),
                logprobs=0,
                seed=r.seed,
                # Texts are decoded once below: vLLM's per-token detokenizing (of the text and of each
                # log-prob's token) was a third of a CPU generate call on the tiny model.
                detokenize=False,
            )
            for r in requests
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": r.prompt_ids} for r in requests], params, use_tqdm=False, lora_request=self.lora_request
        )
        completions = [output.outputs[0] for output in outputs]
        token_ids = [list(c.token_ids) for c in completions]
        # vLLM's incremental detokenizer never emits an unfinished UTF-8 sequence, so a response that
        # stops inside one ends before it: the same texts (1024 of 1024 sampled on the tiny model).
        texts = [t.rstrip("\ufffd") for t in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
        samples = []
        for request, completion, ids, text in zip(requests, completions, token_ids, texts):
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            samples.append(Sample(request.prompt_index, request.sample_index, ids, logprobs, text,
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
