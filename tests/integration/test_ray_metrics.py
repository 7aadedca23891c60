"""Training metrics reach the node's Prometheus endpoint through `ray.util.metrics`."""

import time
import urllib.request

import ray

from rlhf_dist.metrics.ray_gauges import RayMetricsExporter
from rlhf_dist.weight_sync.group import free_port


def test_exported_metrics_appear_on_the_metrics_endpoint():
    port = free_port()
    ray.init(address="local", num_cpus=1, include_dashboard=False, _metrics_export_port=port, namespace="test-metrics")
    try:
        exporter = RayMetricsExporter("metrics-test")
        deadline, lines = time.time() + 90, []
        while time.time() < deadline and not lines:
            exporter.export({"reward/mean": 0.625, "timing/generate": 1.5})
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            # Ray prefixes application metrics with "ray_".
            lines = [l for l in body.splitlines() if l.startswith("ray_rlhf_reward_mean{") and 'run="metrics-test"' in l]
            time.sleep(1)
        assert lines, "rlhf_reward_mean never reached the metrics endpoint"
        assert lines[0].rstrip().endswith("0.625")
    finally:
        ray.shutdown()
