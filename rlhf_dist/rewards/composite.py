"""The reward of a run: the weighted sum of its components, each checked, plus the gold score."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_dist.config.schema import RewardComponent, RewardConfig
from rlhf_dist.errors import UserError
from rlhf_dist.rewards.config_checks import component_problems
from rlhf_dist.rewards.errors import RewardError
from rlhf_dist.rewards.functions import BatchFn, Columns, Extras, load_python_function, with_columns
from rlhf_dist.rewards.model import RewardModel
from rlhf_dist.rewards.remote import RemoteReward
from rlhf_dist.rewards.rules import SampleRule, bind_rule


@dataclass
class RewardResult:
    """Rewards of one batch of B samples."""

    total: torch.Tensor  # (B,) float32: sum of weight * component, clipped to +-clip when set
    components: dict[str, torch.Tensor]  # label -> (B,) float32, unweighted
    gold: torch.Tensor | None  # (B,) float32 gold score, logged but never trained on


@dataclass
class _Component:
    label: str  # key in RewardResult.components and in error messages
    source: str  # where it comes from, e.g. "rule 'letters'", "remote http://..."
    fn: BatchFn
    weight: float


class CompositeReward:
    """``score(prompts, responses, columns)``: every component of ``cfg.components`` run on the
    batch, its output checked (one finite score per sample), and ``sum(weight * component)``
    returned with each unweighted term and the gold score. A component that misbehaves raises
    :class:`RewardError` naming itself and the first bad sample, so a broken reward stops the run
    at the step it broke instead of training on garbage."""

    def __init__(self, cfg: RewardConfig) -> None:
        # No component is valid where an env gives the rewards (multi-turn; the config check says
        # where it is not): the total is then 0, and the turn rewards are added by the driver.
        self.components = [_build(f"reward.components.{i}", spec, cfg) for i, spec in enumerate(cfg.components)]
        labels = [c.label for c in self.components]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise UserError(
                f"reward.components: labels {repeated} appear more than once; give each component a "
                "distinct name (two copies of one rule can be merged by adding their weights)"
            )
        gold = cfg.gold_component()
        self.gold = None if gold is None else _build("reward.gold", gold, cfg, label="gold")
        self.clip = cfg.clip

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], columns: Mapping[str, Sequence[Any]] | None = None,
        extras: Extras | None = None,
    ) -> RewardResult:
        """Score B (prompt, response) pairs; ``columns`` maps each dataset column to its B values
        (row i of every column belongs to sample i); ``extras`` (response token ids, the step) goes
        to Python functions that name them. See :class:`RewardResult` for the shapes."""
        prompts, responses = list(prompts), list(responses)
        batch = len(prompts)
        if len(responses) != batch:
            raise ValueError(f"{batch} prompts but {len(responses)} responses")
        columns = {name: list(values) for name, values in (columns or {}).items()}
        uneven = {name: len(values) for name, values in columns.items() if len(values) != batch}
        if uneven:
            raise ValueError(f"columns must hold one value per sample ({batch}); lengths seen: {uneven}")
        total = torch.zeros(batch, dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        for component in self.components:
            parts[component.label] = _as_scores(component, component.fn(prompts, responses, columns, extras), batch)
            total += component.weight * parts[component.label]
        if self.clip is not None:
            total = total.clamp(-self.clip, self.clip)
        gold = None
        if self.gold is not None:
            gold = _as_scores(self.gold, self.gold.fn(prompts, responses, columns, extras), batch)
        return RewardResult(total=total, components=parts, gold=gold)


def _build(where: str, spec: RewardComponent, cfg: RewardConfig, label: str | None = None) -> _Component:
    """One component from its spec; ``where`` (the config path) prefixes every error."""
    problems = component_problems(spec)
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems))
    if spec.type == "rule":
        fn = _per_sample(spec.name, bind_rule(spec.name, spec.args))
        return _Component(label or spec.name, f"rule {spec.name!r}", fn, spec.weight)
    if spec.type == "python":
        name = spec.name or spec.path.partition(":")[2]
        where = f"python reward {label or name!r} ({spec.path})"
        fn = within(with_columns(load_python_function(spec.path), where), cfg.timeout_s, where)
        return _Component(label or name, f"python {spec.path}", fn, spec.weight)
    if spec.type == "model":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = RewardModel(spec.path, device)
        return _Component(label or spec.name or "model", f"model {spec.path}", lambda p, r, _c, _e=None: model(p, r), spec.weight)
    name = label or spec.name or "remote"
    remote = RemoteReward(spec.url, cfg.timeout_s, cfg.retries, cfg.backoff_s, cfg.max_response_bytes, name=name)
    return _Component(name, f"remote {spec.url}", remote, spec.weight)


def within(fn: BatchFn, timeout_s: float, where: str) -> BatchFn:
    """``fn`` with a time limit: a call past ``timeout_s`` fails the step with a :class:`RewardError`.
    The call runs in a daemon thread, which cannot be stopped: it is left behind, and the run stops."""

    def timed(prompts: list[str], responses: list[str], columns: Columns, extras: Extras | None = None) -> Any:
        answer: dict[str, Any] = {}

        def run() -> None:
            try:
                answer["value"] = fn(prompts, responses, columns, extras)
            except BaseException as exc:  # handed to the caller's thread
                answer["error"] = exc

        thread = threading.Thread(target=run, name=f"reward {where}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise RewardError(
                f"{where} took more than reward.timeout_s={timeout_s:g} s on a batch of {len(prompts)} samples; "
                "make it faster, or raise reward.timeout_s"
            )
        if "error" in answer:
            raise answer["error"]
        return answer["value"]

    return timed


def _per_sample(rule_name: str, rule: SampleRule) -> BatchFn:
    """A batched wrapper around a per-sample rule: sample i gets row i of the columns, and an
    error names the sample it happened on."""

    def score(prompts: list[str], responses: list[str], columns: Columns, extras: Extras | None = None) -> list[float]:
        out = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            row = {name: values[i] for name, values in columns.items()}
            try:
                out.append(float(rule(prompt, response, row)))
            except RewardError as exc:  # already says what is wrong and how to fix it
                raise RewardError(f"sample {i}: {exc}") from exc
            except Exception as exc:
                raise RewardError(
                    f"reward rule {rule_name!r} raised on sample {i} (response {response[:60]!r}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return out

    return score


def _as_scores(component: _Component, values: Any, batch_size: int) -> torch.Tensor:
    """Check a component's output is B finite numbers and return it as (B,) float32."""
    where = f"reward component {component.label!r} ({component.source})"
    try:
        scores = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RewardError(f"{where} returned {str(values)[:120]}, which is not a list of numbers: {exc}") from None
    if scores.dim() != 1 or scores.numel() != batch_size:
        raise RewardError(
            f"{where} returned shape {tuple(scores.shape)} for {batch_size} samples; "
            f"it must return one score per sample, shape ({batch_size},)"
        )
    bad = (~torch.isfinite(scores)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise RewardError(
            f"{where} returned {scores[i].item()} for sample {i} ({bad.numel()} non-finite in all); "
            "rewards must be finite"
        )
    return scores
