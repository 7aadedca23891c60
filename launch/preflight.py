"""The preflight of each command: the checks of `rlhf_dist.planning.machine_checks` that apply to it, made in a
few seconds before Ray starts, so that a user error costs no cluster start-up.

`train` and the stages check where they run. A local run also checks GPUs (an error) and cores (a
warning) against this machine; a run joining a cluster through RAY_ADDRESS leaves resources to the
planner, which sees the cluster's. `submit` checks what this machine can know about the job: its
reward functions and its relative paths, which the job reads from the uploaded project directory.
Problems are raised together as one `UserError`, a line each; warnings go to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launch.cluster import local_nodes, required_cpus
from rlhf_dist.config import RunConfig
from rlhf_dist.config.schema import ModelConfig, RewardComponent
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.data.prompts import BUILTIN_PREFIX, builtin_prompts
from rlhf_dist.data.reader import read_table
from rlhf_dist.errors import UserError
from rlhf_dist.planning.machine_checks import (
    PREFLIGHT_READ_BYTES,
    ModelRef,
    data_path_problem,
    data_size,
    gpu_problem,
    looks_local,
    model_problems,
    oversubscription_warning,
    python_binding_problem,
    python_function_problem,
    remote_reward_problem,
    vocab_problem,
)
from rlhf_dist.planning.memory_plan import MemoryPlanError, plan_memory, refusal
from rlhf_dist.planning.placement import plan_placement
from rlhf_dist.stages.stage_data import load_rows

ROLES = ("rollout", "reward", "reference", "learner")


def preflight_train(cfg: RunConfig, force: bool = False) -> None:
    """`rlhf-dist train` (and a resumed run, with its saved config); ``force``: a memory plan that
    does not fit is a warning, not an error."""
    problems = [p for spec, key in _user_code(cfg) if (p := python_function_problem(spec, key))]
    problems += [p for path, key in _data_paths(cfg) if (p := data_path_problem(path, key, _prompt_reader(cfg, path, key)))]
    problems += [p for task in _builtin_tasks(cfg) if (p := _builtin_problem(task))]
    if _local():
        problems += _gpu_problems({f"placement.{r}.num_gpus": getattr(cfg.placement, r).num_gpus for r in ROLES})

        _warn(oversubscription_warning(required_cpus(cfg), cfg.learner.num_workers, _cores(), "placement.*.num_cpus x workers"))
    problems += model_problems(_models(cfg))
    problems += [p for url, key in _remote_rewards(cfg) if (p := remote_reward_problem(url, key))]
    if not problems:  # the directories are sound: their sizes can be compared
        problems += _vocab_problems(cfg.model)
    _raise(problems)
    reward_binding_check(cfg)
    if _local():
        memory_check(cfg, lambda: local_nodes(cfg), force)


def reward_binding_check(cfg: RunConfig, train_prompts: list | None = None, eval_prompts: list | None = None) -> None:
    """Every Python reward can be called on the prompts' columns: a TRL-style name binds to its value,
    and a parameter that is neither a reward argument nor a column is refused. Without prompts, the
    data files are read here (those under PREFLIGHT_READ_BYTES; larger ones are checked once read)."""
    rewards = _python_rewards(cfg)
    if not rewards:
        return
    if train_prompts is not None:
        sources = {"data.prompts": _names(p.columns for p in train_prompts)}
        if eval_prompts and cfg.eval.prompts:
            sources["eval.prompts"] = _names(p.columns for p in eval_prompts)
    else:
        sources = {}
        for path, key in ((cfg.data.prompts, "data.prompts"), (cfg.eval.prompts, "eval.prompts")):
            if path and path.startswith("builtin:"):
                sources[key] = []
            elif path:
                if not Path(path).expanduser().exists() or data_size(Path(path).expanduser()) > PREFLIGHT_READ_BYTES:
                    return  # missing: said already; large: checked when the run has read it
                try:
                    table = read_table(path, split=cfg.data.split, setting=key, what="prompts")
                except UserError:
                    return  # said by the data check
                sources[key] = _names(_row_columns(row, cfg) for row in table)
    _raise([p for spec, key in rewards if (p := python_binding_problem(spec, key, sources))])


def _row_columns(row: dict, cfg: RunConfig) -> list[str]:
    """The columns a reward sees of one row: all but the one holding its prompt."""
    key = cfg.data.messages_key if row.get(cfg.data.messages_key) is not None else cfg.data.prompt_key
    return [name for name in row if name != key]


def _names(column_lists) -> list[str]:
    return list(dict.fromkeys(name for names in column_lists for name in names))


def memory_check(cfg: RunConfig, nodes, force: bool = False) -> None:
    """Refuse, before any actor starts, a plan whose GPU bundle cannot hold its memory estimate
    (rlhf_dist/planning/memory_plan.py); ``nodes()`` gives the cluster, read only when a role asks for GPUs."""
    if not any(getattr(cfg.placement, r).num_gpus > 0 for r in ROLES):
        return

    problem = refusal(cfg, plan_memory(cfg, plan_placement(cfg, nodes())))
    if problem and not force:
        raise MemoryPlanError(problem)
    _warn(problem and problem.splitlines()[0] + " (--force: starting anyway)")


def preflight_stage(kind: str, cfg: StageConfig, has_rows: bool = False) -> None:
    """`rlhf-dist sft|rm|dpo`; ``has_rows``: the rows come from the caller (the demo), not data.path."""
    problems = []
    if not has_rows:
        if cfg.data.path is None:
            problems.append(f"rlhf-dist {kind} needs data.path: a .jsonl or .parquet file, or a `datasets` directory")
        elif p := data_path_problem(cfg.data.path, "data.path", lambda: load_rows(cfg.data)):
            problems.append(p)
    placement = getattr(cfg, "placement", None)  # stage placement arrives with issue 10
    if _local():
        if placement is not None:
            problems += _gpu_problems({f"placement.{r}.num_gpus": getattr(placement, r).num_gpus
                                       for r in ROLES if hasattr(placement, r)})
        n = cfg.learner.num_workers
        _warn(oversubscription_warning(0.5 * n, n, _cores(), "0.5 per learner rank"))
    problems += model_problems(_policy_models(cfg.model, kind="causal" if kind != "rm" else None))
    if not problems:
        problems += _vocab_problems(cfg.model)
    _raise(problems)


def preflight_submit(cfg: RunConfig | StageConfig, project_dir: Path, shipped_without: list[str]) -> None:
    """What this machine can know about a job (train, or a stage) before the cluster sees it: relative
    paths are read from the uploaded ``project_dir`` (less ``shipped_without``), so they must be there;
    a reward function that does not import here is a warning, since the cluster may have it installed."""
    problems = []
    if isinstance(cfg, StageConfig):
        refs, data, rewards = _policy_models(cfg.model), [(cfg.data.path, "data.path")], []
        if cfg.data.path is None:
            data, problems = [], ["a submitted stage needs data.path: a .jsonl or .parquet file, or a `datasets` directory"]
    else:
        refs, data, rewards = _models(cfg), _data_paths(cfg), _user_code(cfg)
    models = [(ref.path, ref.setting) for ref in refs if looks_local(ref.path)]  # not hub names
    for path, key in [*data, *models]:
        if path.startswith(("/", "~")):
            continue  # a path on the cluster's own disks
        top = Path(path).parts[0]
        if not (project_dir / path).exists() or top in shipped_without:
            problems.append(
                f"{key}={path!r}: a relative path is read from the job's copy of {project_dir}, and it is not "
                f"{'shipped' if top in shipped_without else 'there'}; move it under {project_dir} (not in "
                f"{', '.join(shipped_without)}), or give an absolute path that exists on the cluster"
            )
    for spec, key in rewards:
        problem = python_function_problem(spec, key, root=str(project_dir))
        _warn(problem and f"{problem} (here; the job will fail unless the cluster's Python has it)")
    _raise(problems)


def warn_local_plan(cfg: RunConfig) -> None:
    """`rlhf-dist plan` for this machine: the same warning a local train run gives."""
    _warn(oversubscription_warning(required_cpus(cfg), cfg.learner.num_workers, _cores(), "placement.*.num_cpus x workers"))


def _python_rewards(cfg: RunConfig) -> list[tuple[str, str]]:
    """(module:function, config key) of every Python reward, the gold one included."""
    found = [(c, f"reward.components.{i}.path") for i, c in enumerate(cfg.reward.components)]
    gold = cfg.reward.gold_component()
    if gold is not None:
        found.append((gold, "reward.gold" if isinstance(cfg.reward.gold, str) else "reward.gold.path"))
    return [(c.path, key) for c, key in found if c.type == "python" and c.path]


def _user_code(cfg: RunConfig) -> list[tuple[str, str]]:
    """(module:name, config key) of the user's code a run imports: Python rewards, and a multi-turn
    run's env class and tools."""
    found = _python_rewards(cfg)
    multi = cfg.rollout.multi_turn
    if multi is not None:
        found += [(multi.env, "rollout.multi_turn.env")] if multi.env else []
        found += [(path, f"rollout.multi_turn.tools.{i}") for i, path in enumerate(multi.tools)]
    return found


def _remote_rewards(cfg: RunConfig) -> list[tuple[str, str]]:
    """(url, config key) of every remote reward, the gold one included."""
    found = [(c, f"reward.components.{i}.url") for i, c in enumerate(cfg.reward.components)]
    if isinstance(cfg.reward.gold, RewardComponent):
        found.append((cfg.reward.gold, "reward.gold.url"))
    return [(c.url, key) for c, key in found if c.type == "remote" and c.url]


def _data_paths(cfg: RunConfig) -> list[tuple[str, str]]:
    paths = [(cfg.data.prompts, "data.prompts"), (cfg.eval.prompts, "eval.prompts")]
    return [(p, key) for p, key in paths if p and not p.startswith("builtin:")]


def _prompt_reader(cfg: RunConfig, path: str, key: str):
    return lambda: read_table(path, split=cfg.data.split, setting=key, what="prompts")


def _builtin_tasks(cfg: RunConfig) -> list[str]:
    return [p for p in (cfg.data.prompts, cfg.eval.prompts) if p and p.startswith("builtin:")]


def _builtin_problem(source: str) -> str | None:
    try:
        builtin_prompts(source[len(BUILTIN_PREFIX):], 1, 0)
    except UserError as exc:
        return str(exc)
    return None


def _vocab_problems(model: ModelConfig) -> list[str]:
    if model.path is None:  # the tiny model is built to its own tokenizer
        return []
    tokenizer, setting = (model.tokenizer, "model.tokenizer") if model.tokenizer else (model.path, "model.path's tokenizer")
    problem = vocab_problem("model.path", model.path, setting, tokenizer)
    return [problem] if problem else []


def _policy_models(model: ModelConfig, kind: str | None = "causal") -> list[ModelRef]:
    """The policy's model and tokenizer; ``kind``: what its model must be (the rm stage takes either)."""
    refs = []
    if model.path is not None:
        refs.append(ModelRef("model.path", model.path, tokenizer=model.tokenizer is None, kind=kind))
    if model.tokenizer is not None:
        refs.append(ModelRef("model.tokenizer", model.tokenizer, weights=False, tokenizer=True))
    return refs


def _models(cfg: RunConfig) -> list[ModelRef]:
    refs = _policy_models(cfg.model)
    if cfg.reference.path is not None:
        refs.append(ModelRef("reference.path", cfg.reference.path, kind="causal"))
    components: list[tuple[RewardComponent, str]] = [
        (c, f"reward.components.{i}.path") for i, c in enumerate(cfg.reward.components)
    ]
    if isinstance(cfg.reward.gold, RewardComponent):
        components.append((cfg.reward.gold, "reward.gold.path"))
    refs += [ModelRef(key, c.path, tokenizer=True, kind="reward") for c, key in components if c.type == "model" and c.path]
    return refs


def _gpu_problems(requests: dict[str, float]) -> list[str]:
    if not any(v > 0 for v in requests.values()):
        return []  # no torch import for a CPU run
    import torch

    problem = gpu_problem(requests, torch.cuda.device_count())
    return [problem] if problem else []


def _local() -> bool:
    return not os.environ.get("RAY_ADDRESS")


def _cores() -> int:
    return os.cpu_count() or 1


def _warn(message: str | None) -> None:
    if message:
        print(f"rlhf-dist: warning: {message}", file=sys.stderr)


def _raise(problems: list[str]) -> None:
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))
