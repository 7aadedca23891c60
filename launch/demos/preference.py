"""`rlhf-dist demo`: the three RLHF stages end to end on a synthetic task with a gold rule.

SFT on demonstrations -> a reward model on noisy gold-labelled pairs (calibrated, normalised) ->
PPO against that learned reward, with the gold reward and the reward-hacking alarm watched
throughout: the reward-model over-optimisation experiment (Gao et al. 2022) in miniature.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from launch.console import outputs_line
from launch.run import prepare_run_dir, train
from launch.stages import run_stage
from rlhf_dist.checkpoints.run_lock import releases_run_dirs
from rlhf_dist.config import load_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.data.synthetic import demonstrations, preference_pairs
from rlhf_dist.models.tiny import make_tiny


@releases_run_dirs
def run_demo(run_dir: Path, small: bool = False) -> dict[str, float]:
    run_dir = prepare_run_dir(run_dir)
    n_demos, n_pairs, sft_epochs, rm_epochs, ppo_steps = (256, 512, 2, 3, 12) if small else (1024, 2048, 3, 3, 30)
    base = make_tiny(run_dir / "tiny-model").policy
    print(f"== demo: {n_demos} demonstrations, {n_pairs} preference pairs (10% label noise), PPO {ppo_steps} steps")

    sft_cfg = StageConfig(name="sft", epochs=sft_epochs, model={"path": str(base)}, logging={"tensorboard": False})
    sft = run_stage("sft", sft_cfg, run_dir / "sft", rows=demonstrations(n_demos, seed=0))

    rm_cfg = StageConfig(name="rm", epochs=rm_epochs, model={"path": str(sft.model_dir)}, logging={"tensorboard": False})
    # Train on noisy labels; measure on pairs labelled by the gold rule itself.
    rm = run_stage(
        "rm", rm_cfg, run_dir / "rm",
        rows=preference_pairs(n_pairs, seed=1, label_noise=0.1),
        eval_rows=preference_pairs(256, seed=2, label_noise=0.0),
    )

    ppo_cfg = load_config(None, [
        "name=ppo", f"steps={ppo_steps}", "algorithm.name=ppo", f"model.path={sft.model_dir}",
        f"reward.components=[{{type: model, path: '{rm.model_dir}', name: rm}}]", "reward.gold=letters",
        "learner.critic_init=reward_model", "algorithm.kl.mode=reward", "algorithm.kl.kind=k1",
        "algorithm.kl.coef=0.02", "checkpoint.save_final=true",
    ])
    ppo = train(ppo_cfg, run_dir / "ppo", progress=False).records

    window = 5
    summary = {
        "sft/eval_loss_start": sft.history[0]["sft/eval_loss"],
        "sft/eval_loss_end": sft.history[-1]["sft/eval_loss"],
        "rm/eval_accuracy": rm.metrics["rm/eval_accuracy"],
        "rm/ece_before": rm.metrics.get("rm/ece_before", float("nan")),
        "rm/ece_after": rm.metrics.get("rm/ece_after", float("nan")),
        "ppo/proxy_first": mean(r["reward/mean"] for r in ppo[:window]),
        "ppo/proxy_last": mean(r["reward/mean"] for r in ppo[-window:]),
        "ppo/gold_first": mean(r["reward/gold_mean"] for r in ppo[:window]),
        "ppo/gold_last": mean(r["reward/gold_mean"] for r in ppo[-window:]),
        "ppo/kl_last": mean(r["kl/mean"] for r in ppo[-window:]),
        "ppo/hacking_alarms": sum(r["monitor/hacking_alarm"] for r in ppo),
    }
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_text(summary, run_dir))
    return summary


def summary_text(s: dict[str, float], run_dir: Path) -> str:
    return "\n".join([
        "",
        "== demo summary",
        f"SFT   held-out loss          {s['sft/eval_loss_start']:.3f} -> {s['sft/eval_loss_end']:.3f} (nats/token)",
        f"RM    held-out accuracy      {s['rm/eval_accuracy']:.3f} (gold-labelled pairs)",
        f"RM    ECE                    {s['rm/ece_before']:.3f} -> {s['rm/ece_after']:.3f} after temperature scaling",
        f"PPO   proxy reward (RM)      {s['ppo/proxy_first']:+.3f} -> {s['ppo/proxy_last']:+.3f} (first vs last 5 steps)",
        f"PPO   gold reward            {s['ppo/gold_first']:.3f} -> {s['ppo/gold_last']:.3f}",
        f"PPO   KL to reference        {s['ppo/kl_last']:.3f} nats/sequence (last 5 steps)",
        f"PPO   reward-hacking alarms  {int(s['ppo/hacking_alarms'])}",
        outputs_line(run_dir, {"sft/": "the SFT stage", "rm/": "the reward model", "ppo/": "the PPO run"}),
    ])
