"""The ``rollout.multi_turn`` section: trajectories of several model turns with an env and tools.

Absent or null, a run is single-turn and exactly as before. Kept apart from
:mod:`rlhf_dist.config.schema` so each file fits in a head; the env API it names is in
:mod:`rlhf_dist.envs`, the loop that reads it in :mod:`rlhf_dist.rollout.trajectory`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rlhf_dist.config.section import Section


class TimeoutsConfig(Section):
    """Time limits of a trajectory's outside calls, in seconds."""

    tool: float = Field(30.0, gt=0.0, description="one tool call; past it the call's answer is a timeout error "
                        "and the trajectory goes on")
    env: float = Field(60.0, gt=0.0, description="one reset, step or close of the env; past it the trajectory fails")
    trajectory: float = Field(600.0, gt=0.0, description="the whole trajectory, model turns included; past it, it fails")


class ErrorsConfig(Section):
    """What a failed trajectory (its env raised, timed out or died) costs."""

    retries: int = Field(1, ge=0, description="attempts after the first, each with a fresh env; a sample that still "
                         "fails drops its whole group from the batch")
    max_error_frac: float = Field(0.1, ge=0.0, le=1.0, description="stop the run (exit 1) when more than this share "
                                  "of a step's trajectories failed (or every trajectory of the first step)")


class MultiTurnConfig(Section):
    """Multi-turn rollouts: the model acts over several turns, calling tools and reading an env."""

    env: str | None = Field(None, description="module:Class of the environment, built once per trajectory as "
                            "Class(row, **env_args); null = tools only")
    env_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the env's constructor")
    tools: list[str] = Field(default_factory=list, description="module:function of each tool: plain functions with "
                             "type hints and a docstring (the JSON schema comes from them)")
    tool_format: Literal["auto", "hermes"] = Field(
        "auto", description="how tool calls are written: hermes = <tool_call>{\"name\": ..., \"arguments\": {...}}"
        "</tool_call> (Qwen2.5/Qwen3); auto = chosen from the tokenizer's chat template")
    max_turns: int = Field(4, ge=1, description="model turns per trajectory")
    max_total_tokens: int | None = Field(None, ge=2, description="tokens of a whole trajectory: prompt, every turn "
                                         "and every observation (at most rollout.max_model_len); null = "
                                         "rollout.max_model_len")
    max_observation_tokens: int = Field(128, ge=1, description="longest env or tool message, in tokens; longer ones "
                                        "are cut with a visible marker")
    timeouts: TimeoutsConfig = Field(TimeoutsConfig(), description="seconds per tool call, env call and trajectory")
    isolation: Literal["thread", "process"] = Field(
        "thread", description="thread: env and tools run in the rollout worker; process: in a killable worker "
        "process with resource limits (a stuck call is killed; not a security boundary)")
    concurrency: int = Field(16, ge=1, description="env and tool calls in flight per rollout worker")
    errors: ErrorsConfig = Field(ErrorsConfig(), description="retries of a failed trajectory and the error budget")

    @field_validator("env")
    @classmethod
    def _env_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"{value!r} is not module:Class (e.g. my_envs:GuessEnv)")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_are_paths(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v.count(":") != 1 or not all(v.split(":"))]
        if bad:
            raise ValueError(f"{bad} not module:function (e.g. my_tools:multiply)")
        return value
