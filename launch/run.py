"""`rlhf-dist train`: check everything that can be checked, start Ray and the actors, run the driver."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from launch import console
from launch.cluster import live_nodes, with_gpu_memory
from launch.preflight import memory_check, preflight_train, reward_binding_check
from launch.roles import LocalRayWatch, build_roles, local_ray_stopped, start_ray, stop_roles
from launch.storage import check_shared_run_dir
from rlhf_dist.checkpoints.files import checkpoint_dirs
from rlhf_dist.checkpoints.run_dir import abandon_newer, claim_run_dir, resume_checkpoint
from rlhf_dist.checkpoints.run_lock import lock_run_dir, refuse_if_in_use, releases_run_dirs
from rlhf_dist.config import RunConfig, dump_config, load_config
from rlhf_dist.config.schema import ModelConfig
from rlhf_dist.data import load_prompts
from rlhf_dist.driver.evaluation import split_holdout
from rlhf_dist.driver.loop import Driver
from rlhf_dist.driver.remote_calls import RunFailed, gather
from rlhf_dist.errors import UserError
from rlhf_dist.metrics.logger import MetricsError, MetricsLogger, read_metrics, summary_table
from rlhf_dist.metrics.plots import write_run_curves
from rlhf_dist.models.loading import load_tokenizer
from rlhf_dist.models.tiny import make_tiny, tiny_mismatch
from rlhf_dist.planning.machine_checks import on_user_path
from rlhf_dist.rollout.multi_turn import MultiTurnSpec, TrajectoryPlayer

log = logging.getLogger(__name__)

PROBE_TEXT = "write letters: the red apple and the blue moon"


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, float]]
    final_dir: Path | None


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path) -> Path:
    """Create and mark the run directory, or reuse one of ours with no completed step; refuse
    anything else untouched (rlhf_dist/checkpoints/run_dir.py)."""
    return claim_run_dir(run_dir)


def resolve_model_path(model: ModelConfig, seed: int, run_dir: Path, resume: bool = False) -> str:
    """The policy's directory: model.path, or a tiny model built into the run directory.

    A tiny model already there is reused if it was made from this config's ``model.tiny`` and
    seed; otherwise a resumed run is refused, and a new run (in a dir whose earlier run failed
    before its first step) rebuilds it.
    """
    if model.path is not None:
        if model.path.startswith(("/", ".")) and not Path(model.path).exists():
            raise UserError(f"model.path {model.path!r} does not exist; point it at a Hugging Face model directory")
        return model.path

    built = run_dir / "tiny-model"
    if (built / "policy" / "config.json").exists():
        differs = tiny_mismatch(built, model.tiny, seed)
        if differs is None:
            return str(built / "policy")
        if resume:
            raise UserError(
                f"the tiny model this run started from, {built}, disagrees with {run_dir}/config.yaml: {differs}; "
                "put config.yaml back as the run wrote it, or start a new run"
            )
        console.say(f"rebuilding {built}: the one left there by an earlier attempt has {differs}")
    with console.phase(f"built the tiny model in {built}"):
        return str(make_tiny(built, model.tiny, seed=seed).policy)


def load_resume_config(run_dir: Path) -> RunConfig:
    """The config a run was started with, for ``--resume`` (contract: the saved config wins)."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise UserError(f"--resume {str(run_dir)!r}: no config.yaml there; point --resume at the directory of a run")
    return load_config(str(saved))


@releases_run_dirs
def train(
    cfg: RunConfig, run_dir: Path | None = None, progress: bool | None = None, resume: bool = False,
    resume_from: str | None = None, verify: bool = False, force: bool = False,
) -> RunResult:
    """Run training; with ``resume``, continue ``run_dir`` from its last complete checkpoint, or from
    ``resume_from`` (``step-N`` or a checkpoint directory), checked against its manifest (every
    file's hash with ``verify``). ``force`` starts a run whose memory plan does not fit."""
    preflight_train(cfg, force)  # user errors in seconds, before the run dir, a tiny model or Ray
    run_dir, checkpoint = _claim(cfg, run_dir, resume, resume_from, verify)
    model_path = resolve_model_path(cfg.model, cfg.seed, run_dir, resume)
    tokenizer_path = cfg.model.tokenizer or model_path
    tokenizer = load_tokenizer(tokenizer_path, cfg.model.trust_remote_code)
    tools = multi_turn_probe(cfg, tokenizer)
    train_prompts, eval_prompts, data_stats = load_run_prompts(cfg, tokenizer, tools)
    reward_binding_check(cfg, train_prompts, eval_prompts)
    probe_ids = tokenizer(PROBE_TEXT).input_ids
    if checkpoint is None:  # every check passed, in a run dir of ours: now the config goes in
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    elif resume_from is not None:  # the newer checkpoints leave the resume line (moved, not deleted)
        abandon_newer(run_dir, checkpoint)
    took = console.since_begin()  # checks, the tiny model, the tokenizer and the prompts, since the command began
    made = ["tiny model"] * (cfg.model.path is None) + [f"{len(train_prompts)} training prompts"]
    made += [f"{len(eval_prompts)} eval prompts"] * bool(eval_prompts)
    console.say(f"prepared {run_dir}: {', '.join(made)}" + (f" ({console.seconds(took)})" if took is not None else ""))
    with console.logs_to(run_dir):
        started_ray, roles, watch = False, None, None
        try:
            started_ray = start_ray(cfg)
            if started_ray:
                watch = LocalRayWatch(lambda gone: _ray_stopped_exit(gone, run_dir))
            check_shared_run_dir(run_dir)  # several nodes: every one must see the run dir
            if os.environ.get("RAY_ADDRESS"):  # a cluster: its GPUs' memory is known only now

                memory_check(cfg, lambda: with_gpu_memory(live_nodes()), force)
            roles, sync_address = build_roles(cfg, model_path)
            # A bar only on a terminal; otherwise (--no-progress, a Ray job's log) one line per step.
            show_progress = (cfg.logging.progress_bar if progress is None else progress) and sys.stderr.isatty()
            with MetricsLogger(
                run_dir, tensorboard=cfg.logging.tensorboard, progress=show_progress, total_steps=cfg.steps,
                step_lines=not show_progress, wandb=cfg.logging.wandb, config=cfg.model_dump(mode="json"),
            ) as metrics:
                driver = Driver(
                    cfg, roles, train_prompts, tokenizer.pad_token_id, probe_ids, metrics, sync_address, run_dir,
                    eval_prompts, data_stats,
                )
                if checkpoint is not None:
                    with console.phase(f"restored {checkpoint.name}"):
                        start_step = driver.restore(checkpoint)
                else:
                    start_step = 0
                with console.on_sigterm(lambda: setattr(driver, "stop_requested", True)):
                    driver.run(start_step)
            if driver.stop_requested:
                raise KeyboardInterrupt
            final_dir = run_dir / "final" if cfg.checkpoint.save_final else None
            if final_dir is not None:
                saves = [l.save_pretrained.remote(str(final_dir), tokenizer_path) for l in roles.learners]
                gather(saves, "learner (save)")
        except KeyboardInterrupt:  # SIGINT, or SIGTERM (console turns both into this)
            raise console.RunStopped(stopped_line(cfg, run_dir), console.exit_code()) from None
        except Exception as exc:
            gone = local_ray_stopped() if started_ray else []
            if not gone:
                raise
            roles = None  # nothing left to kill: asking a dead cluster would only wait on its timeouts
            raise RunFailed(ray_stopped_message(gone, run_dir)) from exc
        finally:
            if watch is not None:
                watch.stop()
            stop_roles(roles, started_ray)
    records = read_metrics(run_dir / "metrics.jsonl")  # a resumed run: all steps, the latest line of each
    print(summary_table(records))

    write_run_curves(run_dir, records)  # RUN_DIR/curves.png; a drawing problem is a warning, never a failed run
    print(console.outputs_line(run_dir, {"final/": "the trained policy in Hugging Face format"}))
    return RunResult(run_dir, records, final_dir)


def _claim(cfg: RunConfig, run_dir: Path | None, resume: bool, resume_from: str | None,
           verify: bool) -> tuple[Path, Path | None]:
    """The run dir, locked for this run, and the checkpoint a resume continues from (None: a new run)."""
    if not resume:
        return prepare_run_dir(run_dir or default_run_dir(cfg)), None
    refuse_if_in_use(run_dir, "--resume")
    checkpoint = resume_checkpoint(run_dir, resume_from, verify)
    lock_run_dir(run_dir, "--resume")
    console.say(f"resuming {run_dir} from {checkpoint.name}")
    return run_dir, checkpoint


def ray_stopped_message(gone: list[str], run_dir: Path) -> str:
    return (f"the local Ray this run started was stopped from outside (`ray stop`, or its processes were killed: "
            f"{', '.join(gone)} gone), so its actors died with it; rlhf-dist itself did not fail. "
            + resume_line(run_dir))


def _ray_stopped_exit(gone: list[str], run_dir: Path) -> None:
    """From the watch thread: the run cannot go on without its Ray, and Ray would abort this process
    in a minute with a C++ line; say what happened and exit now (the run-dir lock goes with us)."""
    console.say(f"{console.PREFIX}: run failed: {ray_stopped_message(gone, run_dir)}", err=True)
    sys.stdout.flush()
    os._exit(1)


def resume_line(run_dir: Path) -> str:
    """The last complete checkpoint and the command that continues from it, or that there is none."""
    done = checkpoint_dirs(run_dir)
    if not done:
        return "No checkpoint was written yet, so there is nothing to resume: start a new run."
    return f"The last complete checkpoint is {done[-1]}; continue with: rlhf-dist train --resume {run_dir}"


def stopped_line(cfg: RunConfig, run_dir: Path) -> str:
    """The one line after SIGINT or SIGTERM: the step reached, the last complete checkpoint, and the
    command that continues from it."""
    import shlex


    try:
        rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    except MetricsError:
        rows = []
    steps = [r["step"] + 1 for r in rows if any(not k.startswith("eval/") and k != "step" for k in r)]
    how = "stopped by SIGTERM" if console.exit_code() == console.EXIT_SIGTERM else "interrupted (Ctrl-C)"
    where = f"after step {max(steps)}/{cfg.steps}" if steps else "before the first step"
    done = checkpoint_dirs(run_dir)
    if not done:
        return (f"{console.PREFIX}: {how} {where}; no checkpoint was written yet (checkpoint.every="
                f"{cfg.checkpoint.every}), so there is nothing to resume: start a new run")
    return (f"{console.PREFIX}: {how} {where}; last complete checkpoint: {done[-1]}; continue with: "
            f"rlhf-dist train --resume {shlex.quote(str(run_dir))}")


def multi_turn_probe(cfg: RunConfig, tokenizer) -> list[dict] | None:
    """A multi-turn run's checks before any actor starts: its env class and tools load, and the chat
    template is probed (`rlhf_dist/rollout/chat_probe.py`), said in one paragraph; a template or tool
    that cannot be used is a `UserError` (exit 2). Returns the tools' schemas for the prompts."""
    if cfg.rollout.multi_turn is None:
        return None
    with on_user_path():  # the env and tools import here as in the actors
        player = TrajectoryPlayer(MultiTurnSpec.from_config(cfg), tokenizer)
    console.say(player.probe.summary())
    return player.probe.tools


def load_run_prompts(cfg: RunConfig, tokenizer, tools: list[dict] | None = None) -> tuple[list, list, dict[str, float]]:
    """The training prompts, the eval prompts (``eval.prompts``, or ``eval.holdout`` of them held
    out of data.prompts and never trained on), and the ``data/*`` counts every step logs. What
    loading cut or dropped is said on one line per file. A multi-turn run renders them as chats with
    ``tools``."""
    multi = cfg.rollout.multi_turn is not None
    loaded = load_prompts(cfg.data, tokenizer, cfg.seed, tools=tools, multi_turn=multi)
    train_prompts, eval_prompts, sets = loaded.prompts, [], [loaded]
    if cfg.eval.holdout:
        train_prompts, eval_prompts = split_holdout(train_prompts, cfg.eval.holdout, cfg.seed)
    elif cfg.eval.prompts is not None:
        sets.append(load_prompts(cfg.data, tokenizer, cfg.seed, cfg.eval.prompts, setting="eval.prompts", tools=tools,
                                 multi_turn=multi))
        eval_prompts = sets[-1].prompts
    for line in filter(None, (s.report() for s in sets)):
        console.say(line)
    if len(train_prompts) < cfg.rollout.prompts_per_step:
        raise UserError(
            f"the data has {len(train_prompts)} usable training prompts, fewer than "
            f"rollout.prompts_per_step={cfg.rollout.prompts_per_step}; add prompts or lower it"
        )
    return train_prompts, eval_prompts, {"data/truncated_prompts": float(loaded.num_truncated)}
