"""A sparse 0/1 reward: 1 when at least 15% of a response's letters are "a". A random-init policy
earns it in a minority of samples, so many GRPO groups score all 0 (no learning signal)."""


def a_rich(prompts: list[str], responses: list[str]) -> list[float]:
    out = []
    for response in responses:
        letters = [c for c in response if c.isalpha()]
        out.append(float(sum(c == "a" for c in letters) >= 0.15 * max(1, len(letters))))
    return out
