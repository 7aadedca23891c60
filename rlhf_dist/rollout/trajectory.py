"""One multi-turn trajectory, turn by turn, over any sampler: the loop of a model turn, then tool
calls or the env's answer, until a stop, with every token on the tape (`tape.py`).

The sampler is a function from the tape's ids to one model turn (ids and log-probs, as sampled), so
the loop is the same for both engines and for tests; how turns of many trajectories share an engine
is the caller's business. Limits are exact: no trajectory passes ``max_turns`` model turns or
``max_total_tokens`` held tokens (a turn is asked for at most what is left), and an observation
longer than ``max_observation_tokens`` is cut with a visible marker.

A tool that raises, an unknown tool, bad arguments and a malformed call all become the tool message
(counted), and the trajectory goes on. An env that raises is not handled here: it fails the
trajectory, which the caller retries or drops with its group (a failed trajectory is never scored).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf_dist.envs.api import as_step, finish
from rlhf_dist.envs.tools import Tool, ToolError
from rlhf_dist.rollout.chat_probe import TemplateProbe
from rlhf_dist.rollout.tape import Tape
from rlhf_dist.rollout.tool_calls import ParsedTurn

CUT_MARKER = " [... cut: the observation was longer than max_observation_tokens]"
STOPS = ("done", "max_turns", "max_tokens", "no_tool_call")

Sampler = Callable[[list[int], int], tuple[list[int], list[float]]]
"""``(held ids, at most this many new tokens) -> (sampled ids, their log-probs)``: one model turn."""


@dataclass(frozen=True)
class Limits:
    max_turns: int
    max_total_tokens: int
    max_observation_tokens: int
    tool_timeout_s: float = 30.0  # one tool call; past it the call's answer is a timeout error
    env_timeout_s: float = 60.0  # one reset, step or close of the env; past it the trajectory fails
    trajectory_timeout_s: float = 600.0  # the whole trajectory; past it, it fails


class EnvFailure(Exception):
    """The env raised or timed out, or the trajectory ran out of time: the trajectory fails (it is
    retried with a fresh env, or its group dropped); it is never scored."""

    def __init__(self, phase: str, turn: int, error: BaseException, trajectory: Trajectory | None):
        super().__init__(f"{phase} at turn {turn}: {type(error).__name__}: {error}")
        self.phase, self.turn, self.error, self.trajectory = phase, turn, error, trajectory
        # An error from an isolated env's process carries the child's traceback (and type name, ``kind``).
        self.trace = getattr(error, "trace", None) or "".join(
            traceback.format_exception(type(error), error, error.__traceback__)[-4:])


def call_within(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``fn()`` with a time limit (in a daemon thread, which cannot be stopped: a stuck call is left
    behind); a ``TimeoutError`` naming ``what`` past it, the call's own exception otherwise."""
    answer: dict[str, Any] = {}

    def run() -> None:
        try:
            answer["value"] = finish(fn())
        except BaseException as exc:  # handed to the caller
            answer["error"] = exc

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what} took more than {timeout_s:g} s")
    if "error" in answer:
        raise answer["error"]
    return answer.get("value")


@dataclass
class Trajectory:
    """A finished trajectory: its tape, its conversation, why it stopped and what it earned per turn."""

    tape: Tape
    transcript: list[dict]
    stop: str = ""
    turns: int = 0
    turn_rewards: list[float] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)  # tape index of each model turn's last token
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    parse_errors: int = 0
    env_seconds: float = 0.0  # spent in the env's reset and steps
    tool_seconds: float = 0.0  # spent in tool calls

    @property
    def final_reply(self) -> str:
        """The last assistant message: what the reward components score as ``responses``."""
        return next((m["content"] for m in reversed(self.transcript) if m["role"] == "assistant"), "")


def run_trajectory(
    prompt_ids: list[int], messages: list[dict], sample: Sampler, tokenizer: Any, probe: TemplateProbe,
    limits: Limits, parse: Callable[[str], ParsedTurn], tools: list[Tool], env: Any = None,
    gate: threading.Semaphore | None = None,
) -> Trajectory:
    """Play one trajectory from its rendered prompt (``prompt_ids``, ``messages``) to a stop. An env's
    ``reset()`` answer joins the prompt's messages, which are then rendered again (all of it is
    prompt text, none the model's). ``gate`` bounds the env and tool calls in flight across the
    trajectories that share it."""
    by_name = {t.name: t for t in tools}
    deadline = time.monotonic() + limits.trajectory_timeout_s
    outside = _Outside(limits, gate)
    started = time.monotonic()
    first = outside.env(env.reset, "reset", 0, None) if env is not None else None
    if first is not None:  # what reset returns follows the prompt, before the first generation prompt
        messages = [*messages, *_as_messages(first, "user")]
        prompt_ids = probe.prompt_ids(messages)
    run = Trajectory(Tape.from_prompt(prompt_ids), list(messages))
    run.env_seconds = time.monotonic() - started if env is not None else 0.0
    while True:
        if time.monotonic() > deadline:
            raise EnvFailure("timeout", run.turns, TimeoutError(
                f"the trajectory took more than trajectory_timeout_s={limits.trajectory_timeout_s:g} s"), run)
        room = limits.max_total_tokens - len(run.tape)
        if run.turns >= limits.max_turns or room <= 0:
            run.stop = "max_turns" if run.turns >= limits.max_turns else "max_tokens"
            return run
        ids, logprobs = sample(run.tape.ids, room)
        ids, logprobs = ids[:room], logprobs[:room]
        run.tape.add_model(ids, logprobs)
        run.turns += 1
        run.turn_ends.append(len(run.tape) - 1)
        run.turn_rewards.append(0.0)
        reply = tokenizer.decode(ids, skip_special_tokens=True)
        run.transcript.append({"role": "assistant", "content": reply})
        closing = probe.after_model_turn(ids)
        if len(run.tape) + len(closing) > limits.max_total_tokens:
            run.stop = "max_tokens"
            return run
        run.tape.add(closing, "template")
        turn = parse(reply) if by_name else ParsedTurn()
        if turn.made_a_call:
            answers = outside.tools(run, turn, by_name)
            if not _append(run, [{"role": "tool", "content": a} for a in answers], "tool", probe, tokenizer, limits):
                run.stop = "max_tokens"
                return run
            continue
        if env is None:
            run.stop = "no_tool_call"
            return run
        step = outside.env(lambda: as_step(finish(env.step(reply)), f"{type(env).__name__}.step"), "step",
                           run.turns, run)
        run.turn_rewards[-1] += step.reward
        if step.done:
            run.stop = "done"
            return run
        if step.observation is not None and not _append(run, _as_messages(step.observation, "user"), "env", probe,
                                                        tokenizer, limits):
            run.stop = "max_tokens"
            return run


class _Outside:
    """The env and tool calls of one trajectory: each under its timeout, through the shared gate,
    timed into the trajectory."""

    def __init__(self, limits: Limits, gate: threading.Semaphore | None):
        self.limits, self.gate = limits, gate

    def _within(self, fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
        if self.gate is None:
            return call_within(fn, timeout_s, what)
        with self.gate:
            return call_within(fn, timeout_s, what)

    def env(self, fn: Callable[[], Any], phase: str, turn: int, run: Trajectory | None) -> Any:
        started = time.monotonic()
        try:
            return self._within(fn, self.limits.env_timeout_s, f"env {phase}")
        except Exception as exc:
            raise EnvFailure(phase, turn, exc, run) from exc
        finally:
            if run is not None:
                run.env_seconds += time.monotonic() - started

    def tools(self, run: Trajectory, turn: ParsedTurn, by_name: dict[str, Tool]) -> list[str]:
        """Each call's answer as text; what goes wrong is the answer, counted."""
        answers = []
        for error in turn.errors:
            run.parse_errors += 1
            answers.append(f"error: {error}")
        for call in turn.calls:
            run.tool_calls += 1
            tool = by_name.get(call.name)
            if tool is None:
                run.tool_errors += 1
                answers.append(f"error: unknown tool {call.name!r}; the tools are {sorted(by_name) or 'none'}")
                continue
            started = time.monotonic()
            try:
                answers.append(self._within(lambda: tool.call(call.arguments), self.limits.tool_timeout_s,
                                            f"tool {tool.name}"))
            except ToolError as exc:
                run.tool_errors += 1
                answers.append(f"error: {exc}")
            except TimeoutError as exc:
                run.tool_timeouts += 1
                answers.append(f"error: {exc}")
            finally:
                run.tool_seconds += time.monotonic() - started
        return answers


def _append(run: Trajectory, messages: list[dict], source: str, probe: TemplateProbe, tokenizer: Any,
            limits: Limits) -> bool:
    """Append env or tool messages (each cut to ``max_observation_tokens``) and the next turn's
    opening; False when they do not fit in ``max_total_tokens`` (nothing is appended then)."""
    messages = [_cut(m, tokenizer, limits.max_observation_tokens) for m in messages]
    message_ids, opening = probe.message_ids(messages)
    if len(run.tape) + len(message_ids) + len(opening) >= limits.max_total_tokens:
        return False
    run.tape.add(message_ids, source)
    run.tape.add(opening, "template")
    run.transcript += messages
    return True


def _cut(message: dict, tokenizer: Any, limit: int) -> dict:
    text = message["content"]
    # No token is longer than 64 characters in any tokenizer we know: a longer text is cut before it
    # is tokenised, so a 10 MB tool answer costs no more than a short one.
    head = text[: 64 * (limit + 1)]
    ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit and len(head) == len(text):
        return message
    return {**message, "content": tokenizer.decode(ids[:limit]) + CUT_MARKER}


def _as_messages(observation: str | list[dict], role: str) -> list[dict]:
    return [{"role": role, "content": observation}] if isinstance(observation, str) else list(observation)
