"""The embedded default run (the toy task) as a user adapts it: which of its settings stay when a
user brings a model, prompts or a reward, and the toy's gold, which goes with the toy's reward."""

from __future__ import annotations

from collections.abc import Sequence


def toy_settings_line(overrides: Sequence[str]) -> str | None:
    """With the embedded default run, a user who brings a model, prompts or a reward learns on one
    line which of the toy's settings stayed (and that its gold went with its reward). None when the
    run is the toy itself, or none of its settings stayed."""
    touched = _touched(overrides)
    if not touched & {"model", "data.prompts", "reward"}:
        return None
    kept = []
    if "data.prompts" not in touched:
        kept.append("data.prompts=builtin:letters ('write letters: ...' prompts)")
    if "reward" not in touched:
        kept.append("reward.components=[letters] and reward.gold=letters (the share of 'a' characters)")
    notes = [f"kept the toy's {' and '.join(kept)}; override them for your task"] if kept else []
    if toy_gold_goes(overrides):
        notes.append("the toy's reward.gold=letters went with its reward (set reward.gold to score a gold reward)")
    return "note: the embedded default run: " + "; ".join(notes) if notes else None


def _touched(overrides: Sequence[str]) -> set[str]:
    """Which of model, data.prompts and reward (and reward.gold) the overrides set."""
    keys = [item.partition("=")[0].strip() for item in overrides]
    out = set()
    for key in keys:
        if key == "model" or key.startswith("model.path") or key.startswith("model.tokenizer"):
            out.add("model")
        if key in ("data", "data.prompts"):
            out.add("data.prompts")
        if key == "reward" or key.startswith("reward.components"):
            out.add("reward")
        if key.startswith("reward.gold"):
            out.add("reward.gold")
    return out


def toy_gold_goes(overrides: Sequence[str]) -> bool:
    touched = _touched(overrides)
    return "reward" in touched and "reward.gold" not in touched
