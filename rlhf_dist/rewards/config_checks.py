"""Checks of one reward component's config, shared by config validation and the scorer.

Config validation runs them before any actor starts (so a typo in a rule name or a bad regex
costs no cluster start-up); the scorer runs the same ones when it builds the component.
Importing this loads no torch (the schema is only used for type hints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_dist.rewards.rules import rule_names, rule_problems

if TYPE_CHECKING:
    from rlhf_dist.config.schema import RewardComponent


def component_problems(spec: RewardComponent) -> list[str]:
    """What stops ``spec`` from being built, one line each (empty when nothing does).

    Python functions are not imported here: their module may exist only on the scorer's node.
    """
    problems = []
    if spec.args and spec.type != "rule":
        problems.append(f"args holds rule settings, but type is {spec.type!r}; remove it (only type 'rule' takes them)")
    if spec.type == "rule":
        if not spec.name:
            problems.append(f"type 'rule' needs name, one of: {', '.join(rule_names())}")
        else:
            problems.extend(rule_problems(spec.name, spec.args))
    elif spec.type == "python":
        module, sep, function = (spec.path or "").partition(":")
        if not (module and sep and function):
            problems.append(f"type 'python' needs path as module:function, got {spec.path!r}")
    elif spec.type == "model" and not spec.path:
        problems.append("type 'model' needs path (a reward-model directory)")
    elif spec.type == "remote" and not (spec.url or "").startswith(("http://", "https://")):
        problems.append(f"type 'remote' needs url as http://host:port/path, got {spec.url!r}")
    return problems
