"""Training metrics as Ray metrics (`ray.util.metrics`), so the Ray dashboard's Prometheus shows them.

Names follow CONTRACTS: ``rlhf_`` + the JSONL key with every character outside [a-zA-Z0-9_] turned
into ``_`` (``reward/mean`` -> ``rlhf_reward_mean``). Each gauge carries the run name as a tag.
"""

from __future__ import annotations

import re


def ray_metric_name(key: str) -> str:
    return "rlhf_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class RayMetricsExporter:
    def __init__(self, run_name: str):
        self.run_name = run_name
        self._gauges: dict[str, object] = {}

    def export(self, record: dict[str, float]) -> None:
        """Set one gauge per numeric metric; a no-op when Ray is not running."""
        import ray
        from ray.util.metrics import Gauge

        if not ray.is_initialized():
            return
        for key, value in record.items():
            if not isinstance(value, (int, float)):
                continue
            name = ray_metric_name(key)
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = self._gauges[name] = Gauge(name, description=f"rlhf-dist {key}", tag_keys=("run",))
            gauge.set(float(value), tags={"run": self.run_name})
