"""`rlhf-dist sft|rm|dpo`: launching a supervised stage.

Data is read and tokenised here, before any actor starts, so a bad row fails fast with its line
number. The stage's DeepSpeed world is planned on the cluster's nodes and started by the launcher
that starts the RL learners (launch/roles.py `start_world`); the loop itself is the library's
(rlhf_dist/stages/epochs.py). The model is written in Hugging Face format for the next stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from actors.stage import StageWorker
from launch import console
from launch.cluster import live_nodes, required_cpus
from launch.preflight import preflight_stage
from launch.roles import release, reserve, start_ray_cpus, start_world, stop_roles
from launch.run import prepare_run_dir, resolve_model_path
from launch.storage import check_shared_run_dir
from rlhf_dist.checkpoints.run_lock import releases_run_dirs
from rlhf_dist.config import dump_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.driver.remote_calls import gather
from rlhf_dist.errors import UserError
from rlhf_dist.metrics.logger import MetricsLogger
from rlhf_dist.models.loading import load_tokenizer
from rlhf_dist.planning.placement import plan_world
from rlhf_dist.stages.epochs import StageResult, train_stage
from rlhf_dist.stages.stage_data import load_rows, preference_examples, sft_examples


@releases_run_dirs
def run_stage(
    kind: str,
    cfg: StageConfig,
    run_dir: Path,
    rows: list[dict[str, Any]] | None = None,
    eval_rows: list[dict[str, Any]] | None = None,
) -> StageResult:
    """Train one stage; ``rows`` (already-read data, e.g. from the demo) replaces ``data.path``,
    and ``eval_rows``, when given, is the held-out set (all of ``rows`` then trains)."""
    preflight_stage(kind, cfg, has_rows=rows is not None)  # user errors before the run dir, a tiny model or Ray
    run_dir = prepare_run_dir(run_dir)
    model_path = resolve_model_path(cfg.model, cfg.seed, run_dir)
    tokenizer_path = cfg.model.tokenizer or model_path
    tokenizer = load_tokenizer(tokenizer_path, cfg.model.trust_remote_code)
    if rows is None:
        if cfg.data.path is None:
            raise UserError(f"rlhf-dist {kind} needs data.path (JSONL, Parquet or a datasets directory)")
        rows = load_rows(cfg.data)
    make = sft_examples if kind == "sft" else preference_examples
    if eval_rows is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_fraction": 0.0})})
    examples = make(rows, tokenizer, cfg.data, cfg.seed)
    if eval_rows is not None:
        examples.eval = make(eval_rows, tokenizer, cfg.data, cfg.seed).train
    if examples.layout:
        print(f"{kind}: {cfg.data.path or 'the data'} holds {examples.layout}")
    print(f"{kind}: {len(examples.train)} train / {len(examples.eval)} held-out examples; "
          f"{examples.num_truncated} truncated, {examples.num_skipped} skipped (data.overlong={cfg.data.overlong})")
    if examples.dropped:
        print(f"{kind}: dropped " + ", ".join(f"{n} pair{'s' * (n != 1)} with {why}" for why, n in examples.dropped.items())
              + " (they cannot teach a preference)")
    if problem := examples.teaching_problem(kind, cfg):
        raise UserError(problem)
    (run_dir / "config.yaml").write_text(dump_config(cfg))  # every check passed: now the config goes in
    result = StageResult(kind, run_dir / "model")
    with console.logs_to(run_dir):
        started, workers, groups = False, [], {}
        try:
            started = start_ray_cpus(required_cpus(cfg))
            check_shared_run_dir(run_dir)  # several nodes: every one must see the run dir
            workers, groups = start_stage_world(kind, cfg, model_path, tokenizer.pad_token_id)
            with MetricsLogger(run_dir, tensorboard=cfg.logging.tensorboard, progress=False,
                               wandb=cfg.logging.wandb, config=cfg.model_dump(mode="json")) as metrics:
                train_stage(kind, cfg, workers, examples, metrics, result, tokenizer_path)
        except KeyboardInterrupt:  # SIGINT or SIGTERM: say where it stopped; a stage keeps no checkpoint
            raise console.RunStopped(_stopped_line(kind, cfg, run_dir, result), console.exit_code()) from None
        finally:
            release(workers, list(groups.values()))
            stop_roles(None, started)
    (run_dir / "summary.json").write_text(json.dumps(result.metrics, indent=2))
    return result


def _stopped_line(kind: str, cfg: StageConfig, run_dir: Path, result: StageResult) -> str:
    how = "stopped by SIGTERM" if console.exit_code() == console.EXIT_SIGTERM else "interrupted (Ctrl-C)"
    epochs = max(len(result.history) - 1, 0)  # history: the evaluation at the start, then one per epoch
    where = f"after epoch {epochs}/{cfg.epochs}" if epochs else "before its first epoch ended"
    return (f"{console.PREFIX}: {kind} {how} {where}; stages write no checkpoint, so run the command again "
            f"with a new --run-dir to start over ({run_dir} keeps what was logged)")


def start_stage_world(kind: str, cfg: StageConfig, model_path: str, pad_id: int) -> tuple[list[Any], dict[str, Any]]:
    """Plan the stage's ranks on the live cluster (`PlacementError` before any actor starts when
    it cannot hold them), reserve their bundles, start and set up every rank; returns the ranks
    and their placement groups (for `release`)."""
    n = cfg.learner.num_workers
    started = time.perf_counter()
    plan = plan_world(n, cfg.placement.learner, cfg.placement.strategy, live_nodes())
    groups = reserve(plan)
    workers: list[Any] = []
    try:
        workers, (addr, port) = start_world(StageWorker, plan, groups, cfg.placement.learner, name=f"{kind}-learner")
        gather([w.setup.remote(kind, cfg, model_path, pad_id, n, addr, port) for w in workers], f"{kind} learner")
    except BaseException:
        release(workers, list(groups.values()))
        raise
    console.done(f"{kind} learners ready: ZeRO-{cfg.learner.zero_stage}, {n} rank{'s' * (n > 1)}",
                 time.perf_counter() - started)
    return workers, groups
