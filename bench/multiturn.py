"""Multi-turn rollouts against single-turn at the same sampled tokens, on one engine in this process.

    python bench/multiturn.py [--engine vllm|hf] [--size tiny|20m] [--trajectories 64] [--turns 4] [--tokens 16]
                              [--repeats 3]

Single-turn: every request samples ``turns x tokens`` tokens in one call. Multi-turn: every request
is a trajectory of ``turns`` model turns of ``tokens`` each, with an env that answers each turn with
a short observation (a cheap `step`, as a real env's bookkeeping) and a tool-free loop; the player
runs them as a rollout worker does (`rlhf_dist/rollout/multi_turn.py`). The tiny random-init model
seldom samples eos, so both modes sample close to the same number of tokens; the figure compared is
seconds per sampled token. It prints, per mode, the median wall time, the sampled tokens, tokens/s,
the time inside the engine, and (multi-turn) the seconds spent in env calls, summed over
trajectories. Target (issue 22): multi-turn at most 1.3x single-turn per sampled token.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from rlhf_dist.config.multi_turn import MultiTurnConfig  # noqa: E402
from rlhf_dist.config.schema import SamplingConfig, TinyModelConfig  # noqa: E402
from rlhf_dist.envs import Step  # noqa: E402
from rlhf_dist.models.loading import load_tokenizer  # noqa: E402
from rlhf_dist.models.tiny import make_tiny  # noqa: E402
from rlhf_dist.rollout.engines import make_engine  # noqa: E402
from rlhf_dist.rollout.multi_turn import MultiTurnSpec, TrajectoryPlayer  # noqa: E402
from rlhf_dist.rollout.requests import Request, request_seed  # noqa: E402
from rlhf_dist.rollout.spec import EngineSpec  # noqa: E402

# The model sizes of bench/vs_trl.py: the default tiny Llama (459K parameters) and one of ~20M.
SIZES = {
    "tiny": TinyModelConfig(),
    "20m": TinyModelConfig(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=1408, vocab_size=512),
}


class TalkEnv:
    """Answers every turn with one short line until ``turns`` model turns were played."""

    turns = 4

    def __init__(self, row):
        self.played = 0

    def reset(self):
        return None

    def step(self, reply):
        self.played += 1
        return Step(observation="go on", done=self.played >= self.turns)


def timed_engine(engine):
    """``engine.generate`` that adds its seconds to ``timed_engine.seconds``."""
    def generate(requests, sampling):
        started = time.perf_counter()
        try:
            return engine.generate(requests, sampling)
        finally:
            generate.seconds += time.perf_counter() - started

    generate.seconds = 0.0
    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="sampled tokens per model turn")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    TalkEnv.turns = args.turns

    tiny = make_tiny(Path(tempfile.mkdtemp(prefix="bench-mt-")) / "tiny", SIZES[args.size])
    tok = load_tokenizer(str(tiny.policy), False)
    messages = [{"role": "user", "content": "write letters: the red apple"}]
    prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False)["input_ids"]
    mt = MultiTurnConfig(env=f"{__name__}:TalkEnv", max_turns=args.turns, max_total_tokens=500)
    player = TrajectoryPlayer(MultiTurnSpec(mt, 0), tok)

    def requests(r: int) -> list[Request]:
        return [Request(i, 0, prompt, request_seed(0, r, i, 0), messages=messages, row={})
                for i in range(args.trajectories)]

    rows = {}
    for mode in ("single-turn", "multi-turn"):
        # Each mode on the engine a run of its kind builds (a multi-turn one caches KV in smaller blocks).
        engine = make_engine(EngineSpec(args.engine, str(tiny.policy), str(tiny.policy), "float32", False, 0, 1, 512,
                                        0.5, 1.0, False, None, multi_turn=mode == "multi-turn"))
        walls, tokens, engine_s, env_s = [], [], [], []
        for r in range(args.repeats + 1):  # the first call warms the engine up
            generate = timed_engine(engine)
            started = time.perf_counter()
            if mode == "single-turn":
                samples = generate(requests(r), SamplingConfig(max_new_tokens=args.turns * args.tokens))
                sampled = sum(len(s.response_ids) for s in samples)
                env = 0.0
            else:
                samples = player.play(requests(r), SamplingConfig(max_new_tokens=args.tokens), r, generate)
                sampled = sum(sum(s.multi.model_mask) for s in samples)
                env = sum(s.multi.seconds.get("env", 0.0) for s in samples)
            if r:
                walls.append(time.perf_counter() - started)
                tokens.append(sampled)
                engine_s.append(generate.seconds)
                env_s.append(env)
        del engine
        gc.collect()
        wall = statistics.median(walls)
        rows[mode] = (wall, statistics.mean(tokens), statistics.median(engine_s), statistics.median(env_s))
    print(f"engine {args.engine}, {args.size} model: {args.trajectories} trajectories x {args.turns} turns x {args.tokens} tokens, "
          f"median of {args.repeats}")
    print(f"{'mode':12} {'wall s':>8} {'tokens':>8} {'tokens/s':>9} {'engine s':>9} {'env s (sum)':>12} {'s/token':>10}")
    for mode, (wall, sampled, engine_s, env_s) in rows.items():
        print(f"{mode:12} {wall:8.2f} {sampled:8.0f} {sampled / wall:9.0f} {engine_s:9.2f} {env_s:12.2f} "
              f"{wall / sampled:10.2e}")
    single, multi = rows["single-turn"], rows["multi-turn"]
    print(f"multi-turn / single-turn, seconds per sampled token: {(multi[0] / multi[1]) / (single[0] / single[1]):.2f}x "
          "(target <= 1.3x)")


if __name__ == "__main__":
    main()
