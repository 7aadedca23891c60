"""Our Grafana dashboard: the panels the user asks for, queries on the names Ray exports (CONTRACTS:
`ray_` + `rlhf_` + the JSONL key), each filtered by the run variable, and a layout Grafana can draw.
The queries' results against a real Prometheus are checked in tests/e2e/test_monitoring.py."""

import json
import re

from rlhf_dist.metrics import grafana
from rlhf_dist.metrics.grafana import PANELS, dashboard, family, queries, series


def test_series_is_the_exported_gauge_filtered_by_run():
    assert series("reward/gold_mean") == 'ray_rlhf_reward_gold_mean{run=~"$run"}'
    assert series("eval/pass@1") == 'ray_rlhf_eval_pass_1{run=~"$run"}'


def test_family_keeps_the_prefix_less_its_exclusions():
    expr = family("timing", ("step", "overhead_frac"))
    keep = re.search(r'__name__=~"([^"]+)"', expr).group(1)
    drop = re.search(r'__name__!~"([^"]+)"', expr).group(1)
    selected = [n for n in ("ray_rlhf_timing_generate", "ray_rlhf_timing_sync", "ray_rlhf_timing_step",
                            "ray_rlhf_timing_overhead_frac", "ray_rlhf_timing_", "ray_rlhf_reward_mean")
                if re.fullmatch(keep, n) and not re.fullmatch(drop, n)]  # PromQL matchers are anchored
    assert selected == ["ray_rlhf_timing_generate", "ray_rlhf_timing_sync"]
    assert expr.startswith("label_replace(") and '"part", "$1", "__name__", "ray_rlhf_timing_(.+)"' in expr


def test_the_panels_the_issue_names():
    titles = [p.title for p in PANELS]
    assert titles == ["Reward", "Reward components", "KL to the reference", "Rollout/learner mismatch",
                      "Importance weights", "Time per phase", "Throughput", "Weight sync", "Staleness",
                      "Restarts and skipped steps", "Reward-hacking alarm", "Multi-turn: turns and tool calls",
                      "Multi-turn: why trajectories stopped", "Multi-turn: failures", "Multi-turn: env and tool time"]
    text = "\n".join(queries())
    for key in ("reward/mean", "reward/gold_mean", "eval/reward_mean", "eval/gold_mean", "kl/mean", "kl/coef",
                "rollout/logprob_abs_diff", "is/weight_mean", "throughput/tokens_per_s", "sync/seconds",
                "sync/bytes", "rollout/staleness_mean", "rollout/staleness_max", "faults/actor_restarts",
                "train/skipped_steps", "monitor/hacking_alarm", "rollout/turns_mean", "rollout/turns_max",
                "rollout/tool_calls_mean", "rollout/error_frac", "rollout/dropped_groups", "rollout/env_errors",
                "rollout/tool_errors", "rollout/tool_timeouts", "rollout/parse_errors", "rollout/obs_token_frac",
                "timing/env", "timing/tools"):
        assert series(key) in text, key
    assert [p.stacked for p in PANELS if p.title == "Time per phase"] == [True]
    # the multi-turn row is left out of what a single-turn run must fill; the env and tool seconds
    # (summed over trajectories that overlap) are not stacked with the step's phases
    single = "\n".join(queries(multi_turn=False))
    assert "rollout_stop" not in single and "turns_mean" not in single and "timing_(step|overhead_frac|env|tools)" in single


def test_every_query_is_filtered_by_the_run_and_names_our_gauges():
    for expr in queries():
        assert expr.count('run=~"$run"') == 1, expr
        names = re.findall(r"\bray_rlhf_\w+", expr)
        assert names and all(n.startswith("ray_rlhf_") for n in names), expr


def test_dashboard_json_grafana_can_load():
    model = json.loads(grafana.dashboard_json())
    assert model == dashboard() and model["uid"] == "rlhf-dist" and model["title"] == "rlhf-dist"
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["run"]["query"]["query"] == "label_values(ray_rlhf_policy_version, run)"
    assert variables["run"]["includeAll"] and variables["run"]["allValue"] == ".+"

    panels = model["panels"]
    assert len({p["id"] for p in panels}) == len(panels) == len(PANELS)
    cells = set()
    for panel, spec in zip(panels, PANELS):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs) == len(spec.queries)
        assert [t["expr"] for t in panel["targets"]] == [q.expr for q in spec.queries]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        right = [o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]]
        assert right == [r for r, q in zip(refs, spec.queries) if q.right_axis]
        assert panel["fieldConfig"]["defaults"]["unit"] == spec.unit and panel["description"]
