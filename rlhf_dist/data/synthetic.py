"""A synthetic preference task with a gold rule, for the end-to-end pipeline demo.

The gold rule is the `letters` reward (share of the letter "a" in a response). Demonstrations are
short word sequences; preference pairs are two responses to one prompt labelled by the gold rule,
with a share of labels flipped at random, as imperfect annotators do.
"""

from __future__ import annotations

import random

from rlhf_dist.data import builtin_prompts
from rlhf_dist.rewards import letters_reward

_A_WORDS = "banana apple a aaa an at abc cat and mango grape".split()
_OTHER_WORDS = "the of to is it for on with dog bird fish tree sun moon red blue green big sin".split()


def _response(rng: random.Random, a_share: float) -> str:
    words = [rng.choice(_A_WORDS if rng.random() < a_share else _OTHER_WORDS) for _ in range(rng.randint(3, 7))]
    return " ".join(words)


def demonstrations(n: int, seed: int) -> list[dict[str, str]]:
    """Prompt/response rows of mixed quality (SFT teaches the format, not the preference)."""
    rng = random.Random(seed)
    prompts = builtin_prompts("letters", n, seed)
    return [{"prompt": p, "response": _response(rng, rng.random())} for p in prompts]


def preference_pairs(n: int, seed: int, label_noise: float = 0.1, min_gap: float = 0.05) -> list[dict[str, str]]:
    """(prompt, chosen, rejected) rows labelled by the gold rule; ``label_noise`` of them flipped."""
    rng = random.Random(seed)
    prompts = builtin_prompts("letters", n, seed + 1)
    rows = []
    for prompt in prompts:
        while True:
            a, b = _response(rng, rng.random()), _response(rng, rng.random())
            if abs(letters_reward(prompt, a) - letters_reward(prompt, b)) >= min_gap:
                break
        chosen, rejected = (a, b) if letters_reward(prompt, a) > letters_reward(prompt, b) else (b, a)
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


# ----------------------------------------------------------------------------- arithmetic (RLVR)


def arithmetic_split(low: int, high: int, test_size: int, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Every problem ``a+b`` with a, b in [low, high], split at random into disjoint train and test
    sets (``test_size`` problems held out): the test split measures generalisation, not recall."""
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    if not 0 < test_size < len(pairs):
        raise ValueError(f"test_size must be in 1..{len(pairs) - 1}, got {test_size}")
    random.Random(seed).shuffle(pairs)
    return pairs[test_size:], pairs[:test_size]


def arithmetic_rows(pairs: list[tuple[int, int]], with_answer_message: bool) -> list[dict]:
    """Chat rows ``{messages: [user "a+b="(, assistant "s")], answer: "s"}``: prompts for RL and
    eval (the `math` rule compares the response with ``answer``), or worked demonstrations for SFT."""
    rows = []
    for a, b in pairs:
        messages = [{"role": "user", "content": f"{a}+{b}="}]
        if with_answer_message:
            messages.append({"role": "assistant", "content": str(a + b)})
        rows.append({"messages": messages, "answer": str(a + b)})
    return rows
