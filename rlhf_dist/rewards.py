"""Rewards: rule functions, Python functions, remote HTTP scorers and reward models, summed.

:class:`CompositeReward` turns a :class:`~rlhf_dist.config.schema.RewardConfig` into one callable:
``score(prompts, responses)`` runs every component, checks its output (one finite score per
sample), and returns the weighted sum with each unweighted term for logging. A component that
misbehaves raises :class:`RewardError` naming itself and the first bad sample, so a broken reward
stops the run at the step it broke instead of training on garbage.

This module stays importable without Ray, vLLM or DeepSpeed: the reward actor is a thin shell.
"""

from __future__ import annotations

import difflib
import importlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_dist.config.schema import RewardComponent, RewardConfig
from rlhf_dist.errors import UserError

RuleFn = Callable[[str, str], float]
"""A rule scores one sample: ``(prompt text, response text) -> score``."""

BatchFn = Callable[[list[str], list[str]], Any]
"""A batched component: ``(prompts, responses) -> B scores`` (list, array or tensor)."""


class RewardError(UserError):
    """A reward component failed or returned something that cannot be a reward."""


# ----------------------------------------------------------------------------- rule registry

_RULES: dict[str, RuleFn] = {}


def register_rule(name: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator that adds a rule to the registry under ``name`` (usable as ``type: rule``)."""

    def add(fn: RuleFn) -> RuleFn:
        if name in _RULES and _RULES[name] is not fn:
            raise ValueError(f"a reward rule named {name!r} is already registered ({_RULES[name]!r})")
        _RULES[name] = fn
        return fn

    return add


def rule_names() -> list[str]:
    """The registered rule names, sorted."""
    return sorted(_RULES)


def get_rule(name: str) -> RuleFn:
    """The rule registered as ``name``; an unknown name is a :class:`UserError` with suggestions."""
    if name in _RULES:
        return _RULES[name]
    close = difflib.get_close_matches(name, _RULES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"unknown reward rule {name!r}; {hint}registered rules: {', '.join(rule_names())}. "
        "Register your own with @rlhf_dist.rewards.register_rule, or use type: python"
    )


@register_rule("letters")
def letters_reward(prompt: str, response: str) -> float:
    """Fraction of the response's non-whitespace characters that are ``a`` (the toy task).

    In [0, 1]; an empty or all-whitespace response scores 0.
    """
    visible = sum(1 for ch in response if not ch.isspace())
    return response.count("a") / max(1, visible)


@register_rule("length")
def length_reward(prompt: str, response: str) -> float:
    """Number of whitespace-separated words / 10, capped at 1.0."""
    return min(1.0, len(response.split()) / 10)


# ----------------------------------------------------------------------------- python functions


def load_python_function(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function (any callable attribute)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"python reward path must look like 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import module {module_name!r} for reward {spec!r}: {exc}. Make sure it is on "
            "PYTHONPATH (and installed on every node that runs the reward scorer)"
        ) from exc
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"module {module_name!r} ({module.__file__}) has no attribute {attr!r}{hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserError(f"{spec!r} is a {type(fn).__name__}, not a function; point path at a callable")
    return fn


# ----------------------------------------------------------------------------- remote scorer


class RemoteReward:
    """Scores a batch by POSTing ``{"prompts": [...], "responses": [...]}`` to ``url``.

    The server answers ``{"rewards": [B floats]}``. Timeouts, refused connections and 5xx answers
    are retried ``retries`` times after the first attempt, waiting ``backoff_s * 2**k`` seconds
    before retry ``k``; then, or on any other bad answer, :class:`RewardError`.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_response_bytes: int = 1_000_000,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"remote reward url must start with http:// or https://, got {url!r}")
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.backoff_s, self.max_response_bytes = backoff_s, max_response_bytes

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        body = json.dumps({"prompts": prompts, "responses": responses}).encode()
        raw = self._post_with_retries(body)
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RewardError(
                f"remote reward {self.url} answered with non-JSON ({len(raw)} bytes, starting "
                f"{raw[:80]!r}); it must answer {{\"rewards\": [floats]}}"
            ) from None
        rewards = payload.get("rewards") if isinstance(payload, dict) else None
        if not isinstance(rewards, list) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in rewards
        ):
            raise RewardError(
                f"remote reward {self.url} answered {str(payload)[:120]}; expected a JSON object "
                "with 'rewards': a list of numbers, one per response"
            )
        return [float(r) for r in rewards]

    def _post_with_retries(self, body: bytes) -> bytes:
        attempts = self.retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read(self.max_response_bytes + 1)
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # the server rejected the request: retrying will not help
                    raise RewardError(
                        f"remote reward {self.url} answered HTTP {exc.code} {exc.reason}: "
                        f"{exc.read(200)!r}"
                    ) from None
                failure = f"HTTP {exc.code} {exc.reason}"
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                failure = f"{type(reason).__name__}: {reason}"
            else:
                if len(raw) > self.max_response_bytes:
                    raise RewardError(
                        f"remote reward {self.url} answered more than {self.max_response_bytes} "
                        "bytes; return only {\"rewards\": [floats]} or raise max_response_bytes"
                    )
                return raw
            if attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2**attempt)
        raise RewardError(
            f"remote reward {self.url} failed {attempts} time(s), last with {failure} "
            f"(timeout {self.timeout_s}s); check that the server is up, or raise reward.timeout_s"
        )


# ----------------------------------------------------------------------------- reward model


class RewardModel:
    """A Hugging Face sequence-classification model (num_labels=1) scoring ``prompt + response``.

    Texts are right-padded (the model pools the last non-pad token) and right-truncated to the
    model's maximum positions; scoring runs in batches of ``batch_size`` under ``no_grad``.
    """

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification

        from rlhf_dist.models import load_tokenizer

        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "right"
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load a reward model from {path!r}: {exc}. Point the component's path at a "
                "directory holding a sequence-classification model with num_labels=1"
            ) from None
        if model.config.pad_token_id is None:  # the model finds the last token by pad id
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        norm_file = Path(path) / "reward_normalization.json"
        self.normalization = json.loads(norm_file.read_text()) if norm_file.exists() else None
        self.max_length = getattr(model.config, "max_position_embeddings", None) or min(
            self.tokenizer.model_max_length, 1 << 20
        )

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Scores (B,) float32 on CPU for each (prompt, response), read as in RM training.

        When the model directory holds ``reward_normalization.json`` (written by `rlhf-dist rm`),
        scores are normalised with its mean and std, so that PPO sees rewards of unit scale.
        """
        from rlhf_dist.models import reward_input_ids, right_pad, sequence_scores

        rows = [reward_input_ids(self.tokenizer, p, r)[: self.max_length] for p, r in zip(prompts, responses, strict=True)]
        scores = []
        for start in range(0, len(rows), self.batch_size):
            ids, mask = right_pad(rows[start : start + self.batch_size], self.tokenizer.pad_token_id)
            scores.append(sequence_scores(self.model, ids.to(self.device), mask.to(self.device)).cpu())
        out = torch.cat(scores) if scores else torch.zeros(0)
        if self.normalization is not None:
            out = (out - self.normalization["mean"]) / self.normalization["std"]
        return out


# ----------------------------------------------------------------------------- the composite


@dataclass
class RewardResult:
    """Rewards of one batch of B samples."""

    total: torch.Tensor  # (B,) float32: sum of weight * component, clipped to +-clip when set
    components: dict[str, torch.Tensor]  # label -> (B,) float32, unweighted
    gold: torch.Tensor | None  # (B,) float32 gold rule score, logged but never trained on


@dataclass
class _Component:
    label: str  # key in RewardResult.components and in error messages
    source: str  # where it comes from, e.g. "rule 'letters'", "remote http://..."
    fn: BatchFn
    weight: float


def _per_sample(rule_name: str, rule: RuleFn) -> BatchFn:
    """A batched wrapper around a per-sample rule that names the sample a rule raised on."""

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            try:
                out.append(float(rule(prompt, response)))
            except Exception as exc:
                raise RewardError(
                    f"reward rule {rule_name!r} raised on sample {i} (response {response[:60]!r}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return out

    return score


def _named_errors(where: str, fn: BatchFn) -> BatchFn:
    """Wrap user code so that its exceptions say which reward component raised them."""

    def score(prompts: list[str], responses: list[str]) -> Any:
        try:
            return fn(prompts, responses)
        except Exception as exc:
            raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc

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


def _build(index: int, spec: RewardComponent, cfg: RewardConfig) -> _Component:
    where = f"reward.components.{index}"
    if spec.type == "rule":
        if not spec.name:
            raise UserError(f"{where}: type 'rule' needs name, one of {rule_names()}")
        return _Component(spec.name, f"rule {spec.name!r}", _per_sample(spec.name, get_rule(spec.name)), spec.weight)
    if spec.type == "python":
        if not spec.path:
            raise UserError(f"{where}: type 'python' needs path as 'module:function'")
        label = spec.name or spec.path.partition(":")[2]
        fn = _named_errors(f"python reward {label!r} ({spec.path})", load_python_function(spec.path))
        return _Component(label, f"python {spec.path}", fn, spec.weight)
    if spec.type == "model":
        if not spec.path:
            raise UserError(f"{where}: type 'model' needs path (a reward-model directory)")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return _Component(spec.name or "model", f"model {spec.path}", RewardModel(spec.path, device), spec.weight)
    if spec.type == "remote":
        if not spec.url:
            raise UserError(f"{where}: type 'remote' needs url (http://host:port/path)")
        remote = RemoteReward(spec.url, cfg.timeout_s, cfg.retries, cfg.backoff_s, cfg.max_response_bytes)
        return _Component(spec.name or "remote", f"remote {spec.url}", remote, spec.weight)
    raise UserError(f"{where}: unknown type {spec.type!r}; use rule, model, python or remote")


class CompositeReward:
    """The reward of a run: ``sum(weight * component)`` over ``cfg.components``, plus the gold rule."""

    def __init__(self, cfg: RewardConfig) -> None:
        if not cfg.components:
            raise UserError("reward.components is empty; add at least one (type: rule|model|python|remote)")
        self.components = [_build(i, spec, cfg) for i, spec in enumerate(cfg.components)]
        labels = [c.label for c in self.components]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise UserError(
                f"reward.components: labels {repeated} appear more than once; give each component a "
                "distinct name (two copies of one rule can be merged by adding their weights)"
            )
        self.gold = None
        if cfg.gold is not None:
            self.gold = _Component(cfg.gold, f"gold rule {cfg.gold!r}", _per_sample(cfg.gold, get_rule(cfg.gold)), 0.0)
        self.clip = cfg.clip

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Score B (prompt, response) pairs; see :class:`RewardResult` for the shapes."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        batch = len(prompts)
        total = torch.zeros(batch, dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        for component in self.components:
            parts[component.label] = _as_scores(component, component.fn(prompts, responses), batch)
            total += component.weight * parts[component.label]
        if self.clip is not None:
            total = total.clamp(-self.clip, self.clip)
        gold = None
        if self.gold is not None:
            gold = _as_scores(self.gold, self.gold.fn(prompts, responses), batch)
        return RewardResult(total=total, components=parts, gold=gold)
