"""Our Grafana dashboard: one panel per question a user asks of a run, each a PromQL query over the
``ray_rlhf_*`` gauges (rlhf_dist/metrics/ray_gauges.py) filtered by a ``run`` variable.

`rlhf-dist monitor` writes `dashboard()` beside Ray's own dashboards in the head's session
directory, where the Grafana that Ray provisions picks it up. The panels are data (`PANELS`), so a
test can evaluate every query against a real Prometheus, and the JSON is built from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhf_dist.metrics.ray_gauges import ray_metric_name

UID = "rlhf-dist"
FILENAME = "rlhf_dist_grafana_dashboard.json"
RUN_FILTER = 'run=~"$run"'
# The run variable's choices: every run that has logged a step.
RUNS_QUERY = f"label_values(ray_{ray_metric_name('policy_version')}, run)"


def series(key: str) -> str:
    """The PromQL selector of one JSONL metric: Ray prefixes application metrics with ``ray_``."""
    return f"ray_{ray_metric_name(key)}{{{RUN_FILTER}}}"


def family(prefix: str, exclude: tuple[str, ...] = ()) -> str:
    """Every metric whose JSONL key starts with ``prefix/``, less the keys in ``exclude``, with the rest
    of its name as the label ``part`` (for legends: ``timing/generate`` -> part="generate")."""
    name = f"ray_{ray_metric_name(prefix + '/')}"
    parts = [f'__name__=~"{name}.+"']
    if exclude:
        parts.append(f'__name__!~"{name}({"|".join(exclude)})"')
    selector = "{" + ", ".join([*parts, RUN_FILTER]) + "}"
    return f'label_replace({selector}, "part", "$1", "__name__", "{name}(.+)")'


@dataclass(frozen=True)
class Query:
    expr: str  # PromQL, with $run for the run variable
    legend: str  # Grafana legend format ({{run}} and other labels expand)
    right_axis: bool = False  # drawn against a second y axis (a different unit or scale)


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # a Grafana unit id: none, s, bytes, percentunit, ...
    queries: tuple[Query, ...]
    description: str
    stacked: bool = False
    right_unit: str = "none"  # unit of the queries drawn against the right axis
    width: int = 12  # of Grafana's 24 columns
    multi_turn: bool = False  # the multi-turn row: empty for a single-turn run


PANELS: tuple[Panel, ...] = (
    Panel("Reward", "none", (
        Query(series("reward/mean"), "reward {{run}}"),
        Query(series("reward/gold_mean"), "gold {{run}}"),
        Query(series("eval/reward_mean"), "eval reward {{run}}"),
        Query(series("eval/gold_mean"), "eval gold {{run}}"),
    ), "Mean reward of each step's batch (the total the policy is trained on), the gold reward when the run has "
       "one, and the held-out eval reward and gold at each evaluation."),
    Panel("Reward components", "none", (
        Query(family("reward", ("mean", "std", "gold_mean")), "{{part}} {{run}}"),
    ), "Each weighted reward component's batch mean, before weighting (reward/<component>)."),
    Panel("KL to the reference", "none", (
        Query(series("kl/mean"), "KL per sequence {{run}}"),
        Query(series("kl/coef"), "coefficient {{run}}", right_axis=True),
    ), "KL between policy and reference in nats per sequence (left) and the KL coefficient (right), "
       "which an adaptive controller moves toward its target."),
    Panel("Rollout/learner mismatch", "none", (
        Query(series("rollout/logprob_abs_diff"), "mean |logp rollout - learner| {{run}}"),
        Query(series("rollout/logprob_abs_diff_max"), "max {{run}}"),
    ), "Mean and max absolute difference between the engine's and the learner's log-probs of the sampled "
       "tokens before the update: ~1e-7 in fp32 when the weights are in sync."),
    Panel("Importance weights", "none", (
        Query(series("is/weight_mean"), "mean {{run}}"),
        Query(series("is/weight_max"), "max {{run}}"),
        Query(series("is/clipped_frac"), "clipped fraction {{run}}", right_axis=True),
    ), "Off-policy correction (rollout.async_steps >= 1 or algorithm.is_correction): importance weights "
       "learner/behaviour and the share of tokens at the cap. Empty for on-policy runs without correction.",
       right_unit="percentunit"),
    Panel("Time per phase", "s", (
        Query(family("timing", ("step", "overhead_frac", "env", "tools")), "{{part}} {{run}}"),
    ), "Seconds per step in each phase, stacked: generate, score, reference, values, advantages, train, sync, "
       "eval. Under async rollouts generate, score and reference overlap train.", stacked=True),
    Panel("Throughput", "none", (
        Query(series("throughput/tokens_per_s"), "tokens/s {{run}}"),
    ), "Generated tokens per second of step wall time."),
    Panel("Weight sync", "s", (
        Query(series("sync/seconds"), "seconds {{run}}"),
        Query(series("sync/bytes"), "bytes per generator {{run}}", right_axis=True),
    ), "Seconds of each weight sync (left) and the bytes each generator received (right).", right_unit="bytes"),
    Panel("Staleness", "none", (
        Query(series("rollout/staleness_mean"), "mean {{run}}"),
        Query(series("rollout/staleness_max"), "max {{run}}"),
    ), "Policy versions between the learner and the policy that sampled the batch: 0 on-policy, at most "
       "rollout.async_steps under async rollouts."),
    Panel("Restarts and skipped steps", "none", (
        Query(series("faults/actor_restarts"), "actor restarts {{run}}"),
        Query(series("train/skipped_steps"), "skipped steps {{run}}"),
        Query(series("train/skipped_updates"), "skipped updates {{run}}"),
    ), "Running totals: actors restarted after a failure, steps skipped after a non-finite loss, and "
       "optimizer updates skipped within steps (recovery section)."),
    Panel("Reward-hacking alarm", "none", (
        Query(series("monitor/hacking_alarm"), "alarm {{run}}"),
    ), "1 when, over the last monitor.window steps, the proxy reward rose while the gold reward did not "
       "(or the KL left its budget); 0 otherwise.", width=24),
    # -- multi-turn (rollout.multi_turn): empty for single-turn runs
    Panel("Multi-turn: turns and tool calls", "none", (
        Query(series("rollout/turns_mean"), "turns (mean) {{run}}"),
        Query(series("rollout/turns_max"), "turns (max) {{run}}"),
        Query(series("rollout/tool_calls_mean"), "tool calls per trajectory {{run}}"),
    ), "Model turns per trajectory and tool calls per trajectory, over the step's finished trajectories.",
       multi_turn=True),
    Panel("Multi-turn: why trajectories stopped", "none", (
        Query(family("rollout/stop"), "{{part}} {{run}}"),
    ), "Trajectories of the step by stop: done (the env said so), max_turns, max_tokens, no_tool_call, and the "
       "failed ones: timeout and error.", stacked=True, multi_turn=True),
    Panel("Multi-turn: failures", "none", (
        Query(series("rollout/error_frac"), "failed share {{run}}", right_axis=True),
        Query(series("rollout/dropped_groups"), "dropped groups {{run}}"),
        Query(series("rollout/env_errors"), "failed attempts {{run}}"),
        Query(series("rollout/tool_errors"), "tool errors {{run}}"),
        Query(series("rollout/tool_timeouts"), "tool timeouts {{run}}"),
        Query(series("rollout/parse_errors"), "malformed calls {{run}}"),
    ), "Per step: trajectories that failed every attempt (share, right), groups dropped for them, failed "
       "attempts (each a line of rollout_errors.jsonl), and tool calls answered with an error.",
       right_unit="percentunit", multi_turn=True),
    Panel("Multi-turn: env and tool time", "s", (
        Query(series("timing/env"), "env {{run}}"),
        Query(series("timing/tools"), "tools {{run}}"),
        Query(series("rollout/obs_token_frac"), "observation token share {{run}}", right_axis=True),
    ), "Seconds spent in env calls and in tool calls, summed over the step's trajectories (they overlap), and "
       "the share of held response tokens that are env or tool text (right).", right_unit="percentunit",
       multi_turn=True),
)


_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}  # the dashboard's data-source variable


def queries(multi_turn: bool = True) -> list[str]:
    """Every PromQL expression of the dashboard, in panel order (without the multi-turn row's, which
    a single-turn run leaves empty, when ``multi_turn`` is False)."""
    return [q.expr for panel in PANELS if multi_turn or not panel.multi_turn for q in panel.queries]


def dashboard() -> dict:
    """The Grafana dashboard model (schema of Grafana 10-11), with datasource and run variables."""
    panels, x, y = [], 0, 0
    for pid, panel in enumerate(PANELS, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(_panel_json(pid, panel, x, y))
        x += panel.width
    return {
        "uid": UID,
        "title": "rlhf-dist",
        "description": "Training runs of rlhf-dist: reward, KL, mismatch, phases, sync, staleness, faults.",
        "tags": ["rlhf-dist", "ray"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {"selected": False, "text": "Prometheus", "value": "Prometheus"}, "hide": 0},
            {"name": "run", "label": "Run", "type": "query", "datasource": _DATASOURCE,
             "query": {"query": RUNS_QUERY, "refId": "runs"}, "definition": RUNS_QUERY,
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".+", "sort": 1,
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0},
        ]},
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def _panel_json(pid: int, panel: Panel, x: int, y: int) -> dict:
    overrides = [
        {"matcher": {"id": "byFrameRefID", "options": _ref(i)},
         "properties": [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": panel.right_unit}]}
        for i, q in enumerate(panel.queries) if q.right_axis
    ]
    custom = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 30 if panel.stacked else 0, "showPoints": "auto",
              "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"}}
    return {
        "id": pid,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": _DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": overrides},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": _ref(i), "expr": q.expr, "legendFormat": q.legend, "datasource": _DATASOURCE}
                    for i, q in enumerate(panel.queries)],
    }


def _ref(i: int) -> str:
    return chr(ord("A") + i)
