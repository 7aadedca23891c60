"""The default run's generate requests, timed on the raw engines and on our engine classes.

    python bench/raw_engine.py --model RUN_DIR/tiny-model/policy --out times.json [--steps N] [--warmup W] [key=value ...]

`step_breakdown.py --compare` runs this in a process of its own, with the environment our actors
get (one torch thread: actors/shell.py ACTOR_ENV), after the on-policy run, on the tiny model that
run built. For every step it rebuilds the requests the run sent (the same prompts, drawn by the
same sampler, the same per-request seeds; prompts_per_step x samples_per_prompt of them) and times
them, one call per step, on each of:

- ``vllm``: vLLM's ``LLM.generate`` called directly, on the engine our `VLLMEngine` constructs (its
  constructor arguments), with the prompts and SamplingParams its ``_generate`` builds, made
  before the clock starts;
- ``ours_vllm``: `VLLMEngine.generate` in this process (prefill splitting, params, Sample records);
- ``ours_vllm_ray``: our `RolloutWorker` actor through Ray, called as the pipeline calls it
  (``generate_on``): the wrapper plus Ray, in the same minutes as the two above;
- ``hf``: transformers' ``generate`` on the whole batch (do_sample, top_k off, output scores and
  the chosen tokens' log-probs; one torch seed per call, since it has no per-request seeds);
- ``ours_hf``: `HFEngine.generate` in this process.

The engines take turns on each step's requests, the order rotating, so that load from other jobs
falls on all alike (the machine is shared: timings taken minutes apart differ by more than the
wrapper costs). This process keeps the niceness it was started with; Ray runs the actor at its
``worker_niceness``, and on a loaded machine that alone slows the actor (the JSON records both).
Every step's requests go to each engine `ROUNDS` times (the steps in order, then again); the calls
of the first --warmup steps are left out. The JSON holds each engine's median seconds per call and
mean response tokens per call.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean, median

import torch

from launch.run import load_run_prompts
from rlhf_dist.config import RunConfig, load_config
from rlhf_dist.data import PromptSampler
from rlhf_dist.models.loading import load_tokenizer
from rlhf_dist.rollout.hf_engine import HFEngine
from rlhf_dist.rollout.requests import Request, request_seed
from rlhf_dist.rollout.spec import EngineSpec
from rlhf_dist.rollout.vllm_engine import VLLMEngine

Call = Callable[[list[Request]], int]  # one step's requests -> response tokens made
ROUNDS = 2  # times each step's requests are sent to each engine


def step_requests(cfg: RunConfig, model_path: str) -> list[list[Request]]:
    """The requests of each step of an on-policy run of ``cfg`` (as rlhf_dist/driver/batch_producer.py builds
    them): the sampler's prompts for the step, ``samples_per_prompt`` seeded requests each."""
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path, cfg.model.trust_remote_code)
    prompts, _, _ = load_run_prompts(cfg, tokenizer)
    sampler = PromptSampler(len(prompts), seed=cfg.seed, shuffle=cfg.data.shuffle)
    rollout = cfg.rollout
    return [
        [Request(i, s, prompts[i].ids, request_seed(cfg.seed, step, i, s))
         for i in sampler.next_batch(rollout.prompts_per_step) for s in range(rollout.samples_per_prompt)]
        for step in range(cfg.steps)
    ]


def time_turns(calls: dict[str, Call], steps: list[list[Request]], warmup: int,
               before: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Each step's requests on every call in turn, the order rotating from step to step (``before``
    each call, untimed); per call, the median seconds and mean tokens of the steps after ``warmup``."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    tokens: dict[str, list[int]] = {name: [] for name in calls}
    names = list(calls)
    for step, requests in enumerate(steps):
        for name in names[step % len(names):] + names[: step % len(names)]:
            before()
            started = time.perf_counter()
            tokens[name].append(calls[name](requests))
            seconds[name].append(time.perf_counter() - started)
    return {name: {"median_s": median(seconds[name][warmup:]), "mean_tokens": mean(tokens[name][warmup:]),
                   "calls": len(steps) - warmup} for name in names}


def raw_vllm(engine: VLLMEngine, cfg: RunConfig, steps: list[list[Request]]) -> Call:
    """``LLM.generate`` on inputs prepared ahead, as a caller of vLLM would hold them."""
    from vllm import SamplingParams

    s = cfg.rollout.sampling
    prepared = {  # (a step's list appears ROUNDS times in ``steps``: one entry serves all)
        id(requests): (
            [{"prompt_token_ids": r.prompt_ids} for r in requests],
            [SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else 0,
                            max_tokens=s.max_new_tokens, logprobs=0, seed=r.seed) for r in requests],
        )
        for requests in steps
    }

    def call(requests: list[Request]) -> int:
        prompts, params = prepared[id(requests)]
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    return call


def raw_hf(model_path: str, cfg: RunConfig) -> Call:
    """transformers' ``generate`` on the whole batch, left-padded, sampling as the run does."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path, cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    s = cfg.rollout.sampling

    @torch.no_grad()
    def call(requests: list[Request]) -> int:
        batch = tokenizer.pad({"input_ids": [r.prompt_ids for r in requests]}, return_tensors="pt")
        torch.manual_seed(requests[0].seed)
        out = model.generate(
            **batch, do_sample=True, temperature=s.temperature, top_k=0, top_p=s.top_p,
            max_new_tokens=s.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, output_scores=True, return_dict_in_generate=True,
        )
        new = out.sequences[:, batch["input_ids"].shape[1]:]
        torch.stack(out.scores, 1).log_softmax(-1).gather(-1, new[..., None])  # the log-probs our engines return
        return int((new != tokenizer.pad_token_id).sum())

    return call


def ours(engine: VLLMEngine | HFEngine, cfg: RunConfig) -> Call:
    return lambda requests: sum(len(s.response_ids) for s in engine.generate(requests, cfg.rollout.sampling))


def through_ray(spec: EngineSpec, cfg: RunConfig) -> tuple[Call, int]:
    """Our `RolloutWorker` actor (its engine in a process of its own, as in a run) called through
    ``generate_on``, as the pipeline calls it, on a local Ray with our actors' environment; and the
    actor process's niceness (Ray starts its workers at ``worker_niceness``, 15 by default)."""
    import ray

    from actors.rollout import RolloutWorker
    from actors.shell import actor_env
    from rlhf_dist.driver.remote_calls import generate_on

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": actor_env()})
    worker = RolloutWorker.options(num_cpus=cfg.placement.rollout.num_cpus).remote(spec)

    def call(requests: list[Request]) -> int:
        return sum(len(s.response_ids) for s in generate_on([worker], requests, cfg.rollout.sampling))

    return call, os.getpriority(os.PRIO_PROCESS, ray.get(worker.pid.remote()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the policy directory the on-policy run used")
    parser.add_argument("--out", required=True, help="where the JSON of timings goes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(None, [f"steps={args.steps}", *args.overrides])
    # Every step's requests twice over: twice the calls to take the median of, for ~20 s more.
    steps = step_requests(cfg, args.model) * ROUNDS
    times: dict = {"requests_per_call": len(steps[0])}
    # HF first: vLLM's CPU worker, once started in this process, binds its memory to a NUMA node
    # and turns torch.set_num_threads into a no-op; the HF engines run in actors without it.
    spec = EngineSpec.from_config(cfg, args.model, cfg.seed)
    times |= time_turns({"hf": raw_hf(args.model, cfg), "ours_hf": ours(HFEngine(spec), cfg)}, steps, args.warmup)
    engine = VLLMEngine(spec)
    actor, times["ray_worker_nice"] = through_ray(spec, cfg)
    times["bench_nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    vllm_calls = {"vllm": raw_vllm(engine, cfg, steps), "ours_vllm": ours(engine, cfg), "ours_vllm_ray": actor}
    # The first two share one engine: empty its prefix cache before each call, as a weight sync
    # does in a run, so that neither reuses the other's prompts.
    times |= time_turns(vllm_calls, steps, args.warmup, before=engine.llm.reset_prefix_cache)
    import ray

    ray.shutdown()
    Path(args.out).write_text(json.dumps(times, indent=1))


if __name__ == "__main__":
    main()
