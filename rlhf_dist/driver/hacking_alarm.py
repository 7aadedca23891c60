"""Reward-hacking alarm: the proxy reward keeps rising while the gold reward falls, or KL runs away.

This is the over-optimisation signature of Gao et al. 2022 ("Scaling Laws for Reward Model
Overoptimization"): past some KL from the start, optimising a learned reward makes the true
reward worse. The monitor watches the last ``window`` steps of (proxy, gold, KL) and raises an
alarm when the least-squares slope of the proxy is positive while the gold reward has dropped by
more than ``min_gold_drop`` along its fitted line, or when the KL exceeds its budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class Alarm:
    raised: bool
    reason: str = ""


def _slope(values: list[float]) -> float:
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den if den else 0.0


class HackingMonitor:
    def __init__(self, window: int = 5, min_gold_drop: float = 0.02, kl_budget: float | None = None):
        self.window, self.min_gold_drop, self.kl_budget = window, min_gold_drop, kl_budget
        self.proxy: deque[float] = deque(maxlen=window)
        self.gold: deque[float] = deque(maxlen=window)

    def update(self, proxy: float, gold: float | None, kl: float) -> Alarm:
        """Feed one step; returns whether the alarm is raised at this step, and why."""
        if self.kl_budget is not None and kl > self.kl_budget:
            return Alarm(True, f"KL to the reference {kl:.3g} nats/sequence exceeds the budget {self.kl_budget:g}")
        if gold is None:
            return Alarm(False)
        self.proxy.append(proxy)
        self.gold.append(gold)
        if len(self.gold) < self.window:
            return Alarm(False)
        proxy_slope, gold_slope = _slope(list(self.proxy)), _slope(list(self.gold))
        gold_drop = -gold_slope * (self.window - 1)
        if proxy_slope > 0 and gold_drop > self.min_gold_drop:
            return Alarm(
                True,
                f"over the last {self.window} steps the proxy reward rose ({proxy_slope:+.3g}/step) while the "
                f"gold reward fell by {gold_drop:.3g}: the policy is exploiting the reward, not the task",
            )
        return Alarm(False)

    def state_dict(self) -> dict[str, list[float]]:
        return {"proxy": list(self.proxy), "gold": list(self.gold)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.proxy.extend(state["proxy"])
        self.gold.extend(state["gold"])
