"""Multi-turn rollouts on one rollout worker: many trajectories at once over one engine, none waiting
for another.

Each trajectory runs in a thread of its own (`trajectory.run_trajectory`), its env and tool calls
under their timeouts and through one gate of ``concurrency`` calls. A model turn is a request of the
trajectory's held token ids, handed to the `TurnServer`, which serves on the engine, in the worker's
own thread, every turn that is waiting when the engine is free: a trajectory busy with its env or
tools holds nobody up, and a short trajectory is done while a long one still plays. vLLM batches
those turns with prefix caching (a turn's ids extend the previous turn's); the transformers engine
runs each such batch as one padded generate.

A trajectory whose env fails is played again with a fresh env (`attempts.play_sample`); a sample
whose attempts all fail comes back with ``stop == "error"`` and its error records, and the driver
drops its group.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rlhf_dist.config.multi_turn import MultiTurnConfig
from rlhf_dist.config.schema import RunConfig, SamplingConfig
from rlhf_dist.envs.api import class_tools, env_tools, finish, load_env_class
from rlhf_dist.envs.tools import Tool
from rlhf_dist.errors import UserError
from rlhf_dist.rewards.functions import load_python_function
from rlhf_dist.rollout.attempts import env_seed, make_env, play_sample
from rlhf_dist.rollout.chat_probe import TemplateProbe, probe_template
from rlhf_dist.rollout.isolation import IsolatedEnv, isolated_tools
from rlhf_dist.rollout.requests import Request, Sample, TurnInfo
from rlhf_dist.rollout.tool_calls import parse_hermes
from rlhf_dist.rollout.trajectory import EnvFailure, Limits, Trajectory, call_within, run_trajectory

Generate = Callable[[list[Request], SamplingConfig], list[Sample]]


@dataclass(frozen=True)
class MultiTurnSpec:
    """What a rollout worker reads to play trajectories: the config block, the run's seed (envs are
    seeded from it) and the chat template the prompts were rendered with (None: the tokenizer's)."""

    settings: MultiTurnConfig
    run_seed: int
    chat_template: str | None = None

    max_total_tokens: int = 0  # rollout.multi_turn.max_total_tokens, resolved (null: rollout.max_model_len)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> MultiTurnSpec:
        mt = cfg.rollout.multi_turn
        return cls(mt, cfg.seed, cfg.data.chat_template, mt.max_total_tokens or cfg.rollout.max_model_len)

    @property
    def limits(self) -> Limits:
        mt = self.settings
        return Limits(mt.max_turns, self.max_total_tokens or mt.max_total_tokens, mt.max_observation_tokens,
                      mt.timeouts.tool, mt.timeouts.env, mt.timeouts.trajectory)


def load_tools(settings: MultiTurnConfig) -> list[Tool]:
    """The configured tool functions, each with its schema (a refusal names the bad entry)."""
    return [Tool.from_function(load_python_function(path), f"rollout.multi_turn.tools: {path}")
            for path in settings.tools]


def tool_schemas(settings: MultiTurnConfig) -> list[dict] | None:
    """The JSON schemas the chat template gets as ``tools=`` (None when there are no tools)."""
    tools = load_tools(settings)
    if settings.env:
        tools += class_tools(load_env_class(settings.env))
    return [t.schema for t in tools] or None


def check_tool_format(settings: MultiTurnConfig, tokenizer: Any, template: str | None) -> str:
    """The tool format to parse (``auto`` resolved): hermes is the one we read; a template that writes
    another format is refused, naming what it writes."""
    if settings.tool_format != "auto" or not (settings.tools or _has_env_tools(settings)):
        return "hermes"
    text = template or getattr(tokenizer, "chat_template", None) or ""
    if "<tool_call>" in text or "tools" not in text:
        return "hermes"
    raise UserError("the chat template renders tools but writes no <tool_call> blocks, the only tool format read "
                    "here (hermes); set rollout.multi_turn.tool_format=hermes if the model was taught it, or use "
                    "a template that writes hermes calls")


def _has_env_tools(settings: MultiTurnConfig) -> bool:
    return bool(settings.env) and bool(class_tools(load_env_class(settings.env)))


class TurnServer:
    """Model turns asked for by trajectory threads, served on the engine by one thread (`serve`):
    each engine call takes every turn waiting at that moment."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Request, Future]] = []
        self._cv = threading.Condition()
        self._open = 0  # trajectories still playing

    def ask(self, request: Request) -> Sample:
        """One model turn (blocks the trajectory's thread until the engine has answered)."""
        future: Future = Future()
        with self._cv:
            self._waiting.append((request, future))
            self._cv.notify()
        return future.result()

    def opened(self) -> None:
        with self._cv:
            self._open += 1

    def closed(self) -> None:
        with self._cv:
            self._open -= 1
            self._cv.notify()

    def serve(self, generate: Callable[[list[Request]], list[Sample]], gather_s: float = 0.02) -> None:
        """Answer turns until no trajectory is playing (call after the trajectories are submitted).

        Once a turn waits, the others still playing get ``gather_s`` to join its batch (an engine call
        costs about as much for one turn as for many); a trajectory busy with a slower env or tool is
        not waited for."""
        while True:
            with self._cv:
                while not self._waiting and self._open > 0:
                    self._cv.wait(0.5)
                deadline = time.monotonic() + gather_s
                while 0 < len(self._waiting) < self._open and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
                batch, self._waiting = self._waiting, []
                if not batch and self._open == 0:
                    return
            try:
                samples = generate([request for request, _ in batch])
            except BaseException as exc:  # the engine failed: every waiting trajectory fails with it
                for _, future in batch:
                    future.set_exception(exc)
                raise
            for (_, future), sample in zip(batch, samples):
                future.set_result(sample)


def turn_seed(request_seed: int, turn: int, attempt: int) -> int:
    """The sampling seed of a trajectory's turn: the request's own for its first turn of the first
    attempt (as single-turn), derived from it for the others."""
    if turn == 0 and attempt == 0:
        return request_seed
    digest = hashlib.blake2b(f"{request_seed}/turn{turn}/attempt{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class TrajectoryPlayer:
    """Plays a batch of requests as trajectories on one worker's engine (built once per worker)."""

    def __init__(self, spec: MultiTurnSpec, tokenizer: Any):
        self.spec, self.tokenizer = spec, tokenizer
        settings = spec.settings
        self.env_cls = load_env_class(settings.env) if settings.env else None
        self.tools = load_tools(settings)
        schemas = [t.schema for t in self.tools] + ([t.schema for t in class_tools(self.env_cls)]
                                                     if self.env_cls else [])
        self.probe: TemplateProbe = probe_template(tokenizer, spec.chat_template, schemas or None)
        check_tool_format(settings, tokenizer, spec.chat_template)
        self.limits = spec.limits
        self.gate = threading.Semaphore(settings.concurrency)

    def play(self, requests: list[Request], sampling: SamplingConfig, step: int, generate: Generate) -> list[Sample]:
        """Every request's trajectory, in request order."""
        server = TurnServer()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, len(requests)), thread_name_prefix="trajectory") as pool:
            futures = []
            for request in requests:
                server.opened()
                futures.append(pool.submit(self._sample, request, sampling, step, server, started))
            server.serve(lambda batch: generate(batch, sampling))
            return [f.result() for f in futures]

    def _sample(self, request: Request, sampling: SamplingConfig, step: int, server: TurnServer,
                started: float) -> Sample:
        try:
            where = {"step": step, "prompt_index": request.prompt_index, "sample_index": request.sample_index}
            outcome = play_sample(lambda attempt: self._attempt(request, sampling, step, attempt, server), where,
                                  self.spec.settings.errors.retries)
            return self._as_sample(request, outcome.trajectory, outcome.errors, time.monotonic() - started)
        finally:
            server.closed()

    def _attempt(self, request: Request, sampling: SamplingConfig, step: int, attempt: int,
                 server: TurnServer) -> Trajectory:
        seed = env_seed(self.spec.run_seed, step, request.prompt_index, request.sample_index, attempt)
        if self.spec.settings.isolation == "process":
            return self._isolated_attempt(request, sampling, attempt, server, seed)
        env = None
        if self.env_cls is not None:
            try:
                env = make_env(self.env_cls, request.row or {}, self.spec.settings.env_args, seed)
            except Exception as exc:
                raise EnvFailure("reset", 0, exc, None) from exc
        run = self._play(request, sampling, attempt, server, env,
                         self.tools + (env_tools(env) if env is not None else []))
        if env is not None and callable(getattr(env, "close", None)):
            try:
                call_within(lambda: finish(env.close()), self.limits.env_timeout_s, "env close")
            except Exception as exc:
                raise EnvFailure("close", run.turns, exc, run) from exc
        return run

    def _isolated_attempt(self, request: Request, sampling: SamplingConfig, attempt: int, server: TurnServer,
                          seed: int) -> Trajectory:
        """An attempt whose env and tools live in a process of their own (`isolation.py`)."""
        settings, limits = self.spec.settings, self.limits
        try:
            env = IsolatedEnv(settings.env, request.row or {}, settings.env_args, seed, limits.env_timeout_s)
        except Exception as exc:
            raise EnvFailure("reset", 0, exc, None) from exc
        try:
            tools = isolated_tools(env.process, settings.tools, self.env_cls, self.tools, limits.tool_timeout_s)
            run = self._play(request, sampling, attempt, server, env if self.env_cls is not None else None, tools)
            if self.env_cls is not None:
                try:
                    env.close()
                except Exception as exc:
                    raise EnvFailure("close", run.turns, exc, run) from exc
            return run
        finally:
            env.process.release()

    def _play(self, request: Request, sampling: SamplingConfig, attempt: int, server: TurnServer, env: Any,
              tools: list[Tool]) -> Trajectory:
        turns = iter(range(self.limits.max_turns))

        def sample(ids: list[int], room: int) -> tuple[list[int], list[float]]:
            seed = turn_seed(request.seed, next(turns), attempt)
            answer = server.ask(Request(request.prompt_index, request.sample_index, list(ids), seed,
                                        max_tokens=min(room, sampling.max_new_tokens)))
            return answer.response_ids, answer.logprobs

        messages = request.messages or [{"role": "user", "content": self.tokenizer.decode(request.prompt_ids)}]
        return run_trajectory(request.prompt_ids, messages, sample, self.tokenizer, self.probe, self.limits,
                              parse_hermes, tools, env, self.gate)

    def _as_sample(self, request: Request, run: Trajectory | None, errors: list[dict], seconds: float) -> Sample:
        if run is None:
            info = TurnInfo(list(request.prompt_ids), [], [], 0, "error", [], [], errors=errors,
                            seconds={"finished_at": seconds})
            return Sample(request.prompt_index, request.sample_index, [], [], "", False, info)
        ids, mask, logprobs = run.tape.response()
        start = run.tape.prompt_len
        info = TurnInfo(
            prompt_ids=run.tape.ids[:start], model_mask=mask, transcript=run.transcript, turns=run.turns,
            stop=run.stop, turn_rewards=list(run.turn_rewards), turn_ends=[end - start for end in run.turn_ends],
            counts={"tool_calls": run.tool_calls, "tool_errors": run.tool_errors, "tool_timeouts": run.tool_timeouts,
                    "parse_errors": run.parse_errors, "env_errors": len(errors)},
            seconds={"env": run.env_seconds, "tools": run.tool_seconds, "finished_at": seconds},
            errors=errors,
        )
        return Sample(request.prompt_index, request.sample_index, ids, logprobs, run.final_reply,
                      run.stop == "max_tokens", info)
