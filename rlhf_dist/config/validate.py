"""Cross-field checks: everything about a config that no single field can know alone.

`validate_config` returns a list of problems (empty when the config can run); each names the keys
involved, the values seen and a way to fix it.
"""

from __future__ import annotations

from rlhf_dist.config.schema import RunConfig
from rlhf_dist.rewards.config_checks import component_problems

# Head dims that vLLM's CPU attention is known to accept (STACK-NOTES: 16 was rejected, 64 works).
VLLM_HEAD_DIMS = (64, 128)


def validate_config(cfg: RunConfig) -> list[str]:
    problems: list[str] = []
    for check in (_batch_sizes, _algorithm, _kl, _off_policy, _lengths, _tiny_model, _reward, _placement, _eval, _offload):
        problems.extend(check(cfg))
    return problems


def _batch_sizes(cfg: RunConfig) -> list[str]:
    rollout, learner = cfg.rollout, cfg.learner
    batch = rollout.prompts_per_step * rollout.samples_per_prompt
    per_optimizer_step = learner.num_workers * learner.micro_batch_size
    problems = []
    if batch % learner.mini_batch_size:
        problems.append(
            f"learner.mini_batch_size={learner.mini_batch_size} does not divide the rollout batch of "
            f"{batch} sequences (rollout.prompts_per_step={rollout.prompts_per_step} x "
            f"rollout.samples_per_prompt={rollout.samples_per_prompt}); pick a divisor of {batch}"
        )
    if learner.mini_batch_size % per_optimizer_step:
        problems.append(
            f"learner.mini_batch_size={learner.mini_batch_size} is not a multiple of "
            f"learner.num_workers x learner.micro_batch_size = {learner.num_workers} x "
            f"{learner.micro_batch_size} = {per_optimizer_step}; every rank needs whole micro-batches"
        )
    if batch % learner.num_workers:
        problems.append(
            f"the rollout batch of {batch} sequences does not split evenly over "
            f"learner.num_workers={learner.num_workers}"
        )
    longest, what = cfg.data.max_prompt_tokens + rollout.sampling.max_new_tokens, (
        "data.max_prompt_tokens + rollout.sampling.max_new_tokens")
    if rollout.multi_turn is not None:
        longest, what = rollout.multi_turn.max_total_tokens or rollout.max_model_len, "rollout.multi_turn.max_total_tokens"
    if 0 < learner.max_tokens_per_micro_batch < longest:
        problems.append(
            f"learner.max_tokens_per_micro_batch={learner.max_tokens_per_micro_batch} is smaller than one "
            f"full-length sequence ({what} = {longest}); "
            f"it counts tokens, not sequences: set it to at least {longest} (e.g. {8 * longest}), or 0 to use "
            "learner.micro_batch_size"
        )
    return problems


def _algorithm(cfg: RunConfig) -> list[str]:
    algo = cfg.algorithm
    problems = []
    if algo.name in ("grpo", "rloo") and cfg.rollout.samples_per_prompt < 2:
        problems.append(
            f"algorithm.name={algo.name} compares samples of one prompt, so "
            f"rollout.samples_per_prompt must be >= 2 (got {cfg.rollout.samples_per_prompt})"
        )
    if algo.name != "ppo" and cfg.learner.critic_init != "policy":
        problems.append(
            f"learner.critic_init={cfg.learner.critic_init} only applies to algorithm.name=ppo "
            f"(got {algo.name}); remove it"
        )
    if cfg.learner.critic_init == "reward_model" and not any(
        c.type == "model" for c in cfg.reward.components
    ):
        problems.append(
            "learner.critic_init=reward_model needs a reward component of type 'model' to copy from"
        )
    return problems


def _kl(cfg: RunConfig) -> list[str]:
    kl = cfg.algorithm.kl
    problems = []
    if kl.mode == "loss" and kl.kind == "k1":
        problems.append(
            "algorithm.kl.kind=k1 with algorithm.kl.mode=loss: k1 as a loss has zero expected "
            "gradient; use k2 or k3 as a loss, or k1 with mode=reward"
        )
    if kl.adaptive and kl.target is None:
        problems.append("algorithm.kl.adaptive=true needs algorithm.kl.target (nats per sequence)")
    return problems


def _off_policy(cfg: RunConfig) -> list[str]:
    """Async generation, dynamic sampling and the overlong penalty (rlhf_dist/algorithms/offpolicy.py)."""
    algo, rollout, problems = cfg.algorithm, cfg.rollout, []
    if cfg.placement.colocate and rollout.async_steps >= 1:
        problems.append(
            f"rollout.async_steps={rollout.async_steps} with placement.colocate=true: colocated engines sleep "
            "while the learners train, so generation cannot overlap training; set rollout.async_steps=0 or "
            "placement.colocate=false"
        )
    if algo.dynamic_sampling and (algo.name not in ("grpo", "rloo") or rollout.samples_per_prompt < 2):
        problems.append(
            f"algorithm.dynamic_sampling=true drops groups whose samples all scored the same, so it needs a group "
            f"algorithm and groups of two or more (got algorithm.name={algo.name}, rollout.samples_per_prompt="
            f"{rollout.samples_per_prompt}); use algorithm.name=grpo or rloo with samples_per_prompt >= 2, or "
            "dynamic_sampling=false"
        )
    max_new = rollout.sampling.max_new_tokens
    if algo.overlong == "penalty" and algo.overlong_buffer >= max_new:
        problems.append(
            f"algorithm.overlong_buffer={algo.overlong_buffer} must be smaller than rollout.sampling.max_new_tokens="
            f"{max_new} with algorithm.overlong=penalty, or every response is penalised; set overlong_buffer to at "
            f"most {max_new - 1}"
        )
    return problems


def _lengths(cfg: RunConfig) -> list[str]:
    need = cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens
    problems = []
    if need > cfg.rollout.max_model_len:
        problems.append(
            f"data.max_prompt_tokens + rollout.sampling.max_new_tokens = "
            f"{cfg.data.max_prompt_tokens} + {cfg.rollout.sampling.max_new_tokens} = {need} exceeds "
            f"rollout.max_model_len={cfg.rollout.max_model_len}; raise it or shorten one of them"
        )
    multi = cfg.rollout.multi_turn
    if multi is not None and (multi.max_total_tokens or 0) > cfg.rollout.max_model_len:
        problems.append(
            f"rollout.multi_turn.max_total_tokens={multi.max_total_tokens} exceeds rollout.max_model_len="
            f"{cfg.rollout.max_model_len}, the longest sequence the engine holds; raise max_model_len or lower it"
        )
    if multi is not None and (multi.max_total_tokens or cfg.rollout.max_model_len) <= cfg.data.max_prompt_tokens:
        problems.append(
            f"rollout.multi_turn.max_total_tokens={multi.max_total_tokens or cfg.rollout.max_model_len} leaves no room for a turn after a prompt "
            f"of data.max_prompt_tokens={cfg.data.max_prompt_tokens}; raise it"
        )
    if multi is not None and not multi.env and not multi.tools:
        problems.append("rollout.multi_turn has neither an env nor tools: set rollout.multi_turn.env (module:Class), "
                        "rollout.multi_turn.tools (a list of module:function), or both; or drop the block for "
                        "single-turn rollouts")
    if cfg.model.path is None and cfg.rollout.max_model_len > cfg.model.tiny.max_position_embeddings:
        problems.append(
            f"rollout.max_model_len={cfg.rollout.max_model_len} exceeds the tiny model's "
            f"model.tiny.max_position_embeddings={cfg.model.tiny.max_position_embeddings}"
        )
    return problems


def _tiny_model(cfg: RunConfig) -> list[str]:
    if cfg.model.path is not None:
        return []
    tiny = cfg.model.tiny
    if tiny.hidden_size % tiny.num_heads:
        return [
            f"model.tiny.hidden_size={tiny.hidden_size} is not divisible by "
            f"model.tiny.num_heads={tiny.num_heads}"
        ]
    head_dim = tiny.hidden_size // tiny.num_heads
    if cfg.rollout.engine == "vllm" and head_dim not in VLLM_HEAD_DIMS:
        return [
            f"model.tiny head_dim = hidden_size/num_heads = {head_dim}; vLLM's CPU attention needs "
            f"one of {VLLM_HEAD_DIMS} (e.g. hidden_size={64 * tiny.num_heads})"
        ]
    return []


def _reward(cfg: RunConfig) -> list[str]:
    """The scorer's own checks (rule names and args, required fields), run before any actor starts."""
    problems = []
    env_rewards = cfg.rollout.multi_turn is not None and cfg.rollout.multi_turn.env is not None
    if not cfg.reward.components and not env_rewards:
        problems.append("reward.components is empty; add at least one (type: rule|model|python|remote), or give "
                        "the rewards from an env (rollout.multi_turn.env)")
    for i, comp in enumerate(cfg.reward.components):
        problems.extend(f"reward.components.{i}: {problem}" for problem in component_problems(comp))
    gold = cfg.reward.gold_component()
    if gold is not None:
        problems.extend(f"reward.gold: {problem}" for problem in component_problems(gold))
    names = [c.name or c.path or c.url for c in cfg.reward.components]
    duplicates = sorted({n for n in names if names.count(n) > 1 and n})
    if duplicates:
        problems.append(f"reward.components: each component needs a distinct name; repeated: {duplicates}")
    return problems


def _placement(cfg: RunConfig) -> list[str]:
    tp = cfg.rollout.tensor_parallel_size
    gpus = cfg.placement.rollout.num_gpus
    problems = []
    if tp > 1 and gpus != tp:
        problems.append(
            f"rollout.tensor_parallel_size={tp} needs placement.rollout.num_gpus={tp} per worker "
            f"(got {gpus}): each vLLM engine owns its tensor-parallel group"
        )
    if cfg.placement.colocate and (gpus == 0 or cfg.placement.learner.num_gpus == 0):
        problems.append(
            "placement.colocate=true shares GPUs between rollout and learner; set "
            "placement.rollout.num_gpus and placement.learner.num_gpus > 0, or colocate=false"
        )
    if cfg.placement.colocate:
        problems.extend(_colocation(cfg))
    problems.extend(_guests(cfg))
    return problems


def _guests(cfg: RunConfig) -> list[str]:
    """``placement.reference.colocate_with`` / ``placement.reward.colocate_with``: worker i shares
    learner rank i's bundle and GPU (rlhf_dist/planning/placement.py)."""
    place, problems = cfg.placement, []
    guests = [r for r in ("reference", "reward") if getattr(place, r).colocate_with == "learner"]
    for role in guests:
        res, count = getattr(place, role), getattr(cfg, role).num_workers
        if place.learner.num_gpus == 0:
            problems.append(
                f"placement.{role}.colocate_with=learner shares the learners' GPUs, but placement.learner.num_gpus=0 "
                f"(a CPU run); set placement.{role}.colocate_with=null, or give the learners GPUs"
                + (" (or learner_process: the learner ranks hold the reference)" if role == "reference" else "")
            )
        elif res.num_gpus == 0:
            problems.append(
                f"placement.{role}.colocate_with=learner needs placement.{role}.num_gpus > 0, its share of each "
                f"learner rank's GPU (e.g. 0.2); with 0 it would hide every GPU and run on CPU"
            )
        if count > cfg.learner.num_workers:
            problems.append(
                f"placement.{role}.colocate_with=learner puts {role} worker i in learner rank i's bundle: "
                f"{role}.num_workers={count} must be <= learner.num_workers={cfg.learner.num_workers}"
            )
    if guests and place.learner.num_gpus > 0:
        sharers = ["learner", *(["rollout"] if place.colocate else []), *guests]
        shares = [getattr(place, r).num_gpus for r in sharers]
        if sum(shares) > 1.0 + 1e-9:
            terms = " + ".join(f"placement.{r}.num_gpus" for r in sharers)
            values = " + ".join(f"{v:g}" for v in shares)
            problems.append(
                f"{terms} = {values} = {sum(shares):g} shares of one GPU, more than 1: the roles colocated with the "
                f"learner split each learner rank's GPU; use fractions such as {_split(len(sharers))}"
            )
    return problems


def _split(n: int) -> str:
    share = 1.0 / n
    return " and ".join([f"{share:.2g}"] * n) if n < 4 else f"{share:.2g} each"


def _colocation(cfg: RunConfig) -> list[str]:
    """Colocated runs pair engine i with learner rank i on one GPU (rlhf_dist/planning/placement.py)."""
    place, problems = cfg.placement, []
    if cfg.rollout.tensor_parallel_size != 1:
        problems.append(
            f"placement.colocate=true needs rollout.tensor_parallel_size=1 (got {cfg.rollout.tensor_parallel_size}): "
            "each engine shares one GPU with one learner rank; use colocate=false for tensor-parallel engines"
        )
    elif cfg.learner.num_workers != cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size:
        problems.append(
            f"placement.colocate=true pairs each vLLM engine with one learner rank on one GPU: learner.num_workers "
            f"({cfg.learner.num_workers}) must equal rollout.num_workers x rollout.tensor_parallel_size "
            f"({cfg.rollout.num_workers} x {cfg.rollout.tensor_parallel_size}); set rollout.num_workers="
            f"{cfg.learner.num_workers}"
        )
    share = place.learner.num_gpus + place.rollout.num_gpus
    if share > 1.0 + 1e-9:
        problems.append(
            f"placement.colocate=true: placement.learner.num_gpus + placement.rollout.num_gpus = "
            f"{place.learner.num_gpus:g} + {place.rollout.num_gpus:g} = {share:g} shares of one GPU, more than 1; "
            "use fractions such as 0.5 and 0.5"
        )
    return problems


def _eval(cfg: RunConfig) -> list[str]:
    problems = []
    if cfg.rollout.sampling.temperature == 0:
        problems.append(
            "rollout.sampling.temperature=0: training samples from the policy and needs a temperature > 0 "
            "(greedy decoding is for eval.temperature)"
        )
    ev = cfg.eval
    if ev.prompts is not None and ev.holdout:
        problems.append(f"eval.prompts={ev.prompts!r} and eval.holdout={ev.holdout}: choose one source of eval prompts")
    if ev.every and ev.prompts is None and not ev.holdout:
        problems.append(
            f"eval.every={ev.every} but no eval prompts: set eval.prompts (a file) or eval.holdout "
            "(a number of prompts held out of data.prompts)"
        )
    return problems


def _offload(cfg: RunConfig) -> list[str]:
    return offload_problems(cfg.learner)


def offload_problems(learner) -> list[str]:
    """``learner.offload`` against ``learner.zero_stage`` (a TrainerConfig: the RL learners' or a stage's)."""
    need = {"optimizer": 1, "all": 3}.get(learner.offload, 0)
    if learner.zero_stage < need:
        return [
            f"learner.offload={learner.offload} needs learner.zero_stage >= {need} (got {learner.zero_stage}): "
            f"DeepSpeed offloads {'the optimizer' if need == 1 else 'weights'} only under ZeRO {need}"
            f"{'-3' if need == 1 else ''}; raise learner.zero_stage or set learner.offload="
            f"{'none' if need == 1 else 'optimizer'}"
        ]
    return []
