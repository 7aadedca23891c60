"""The environment and tool API of multi-turn rollouts (public and stable; CONTRACTS "Multi-turn").

An environment is a class named by ``rollout.multi_turn.env`` (``module:Class``), built once per
trajectory as ``Class(row, **env_args)``, ``row`` being the dataset row with all its columns. Before
``reset()`` it gets ``self.seed``, an integer fixed by (run seed, step, prompt, sample, retry).

- ``reset(self)`` returns a ``str``, a ``list[dict]`` of messages, or ``None``: what follows the prompt;
- ``step(self, reply: str)`` is called after every model turn that made no tool call, and returns a
  :class:`Step` (or a dict with its keys); a ``str`` observation is one user message;
- ``close(self)`` is optional; any of the three may be ``async def``.

Tools are plain functions with type hints and a docstring (``rollout.multi_turn.tools``); an env's
methods decorated with :func:`tool` are tools bound to that trajectory's env.
"""

from rlhf_dist.envs.api import Step, as_step, env_tools, load_env_class, tool
from rlhf_dist.envs.tools import Tool, ToolError

__all__ = ["Step", "Tool", "ToolError", "as_step", "env_tools", "load_env_class", "tool"]
