"""Rewards: rules, Python functions, remote HTTP scorers and reward models, summed.

:class:`CompositeReward` turns a :class:`~rlhf_dist.config.schema.RewardConfig` into one callable,
``score(prompts, responses, columns)``, where ``columns`` carries each dataset column's values for
the batch so that rewards can check a response against its row's label. The modules, by meaning:

- :mod:`~rlhf_dist.rewards.rules`: the rule registry and built-in rules (``letters``, ``length``,
  ``math``, ``exact_match``, ``format``); :mod:`~rlhf_dist.rewards.math_answer` finds and compares
  final answers for ``math``;
- :mod:`~rlhf_dist.rewards.functions`: ``module:function`` rewards, called TRL-style;
- :mod:`~rlhf_dist.rewards.remote`: HTTP reward servers;
- :mod:`~rlhf_dist.rewards.model`: sequence-classification reward models;
- :mod:`~rlhf_dist.rewards.composite`: the weighted sum, its checks, and the gold score;
- :mod:`~rlhf_dist.rewards.config_checks`: what config validation and the scorer both check.

Nothing here loads Ray, vLLM or DeepSpeed (the reward actor is a thin shell), and torch loads only
when the composite or a reward model is first used, so config validation stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhf_dist.rewards.errors import RewardError
from rlhf_dist.rewards.functions import load_python_function
from rlhf_dist.rewards.remote import RemoteReward
from rlhf_dist.rewards.rules import (
    exact_match_reward,
    format_reward,
    get_rule,
    length_reward,
    letters_reward,
    math_reward,
    register_rule,
    rule_names,
)

_NEEDS_TORCH = {"CompositeReward": "composite", "RewardResult": "composite", "RewardModel": "model"}

__all__ = [
    "CompositeReward",
    "RemoteReward",
    "RewardError",
    "RewardModel",
    "RewardResult",
    "exact_match_reward",
    "format_reward",
    "get_rule",
    "length_reward",
    "letters_reward",
    "load_python_function",
    "math_reward",
    "register_rule",
    "rule_names",
]


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported on first use (PEP 562)."""
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(f"rlhf_dist.rewards.{_NEEDS_TORCH[name]}"), name)
    raise AttributeError(f"module 'rlhf_dist.rewards' has no attribute {name!r}")
