"""The memory plan of a placement `Plan`: an estimate per GPU bundle, the fit verdict, the refusal
that says what to change, and the table `rlhf-dist plan` prints. Formulas: `rlhf_dist.planning.memory_formulas`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_dist.config.schema import RunConfig
from rlhf_dist.planning.memory_formulas import (
    DTYPE_BYTES,
    GIB,
    ActorEstimate,
    ModelShape,
    frozen_estimate,
    learner_estimate,
    model_shape,
    rollout_estimate,
    shape_of_path,
)
from rlhf_dist.planning.placement import PlacementError, Plan


class MemoryPlanError(PlacementError):
    """An estimate exceeds a device's memory (raised before any actor starts; --force overrides)."""


@dataclass
class BundleEstimate:
    """One GPU bundle: the actors in it, their estimates, and its peak, in bytes per device."""

    group: str
    bundle: int
    node: str
    gpus: float
    device_gib: float  # memory of one GPU of the bundle's node; 0 = unknown
    actors: list[ActorEstimate] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # colocated: "train" and "generate"
    peak: float = 0.0

    @property
    def capacity(self) -> float:
        """A whole device, or a fractional bundle's share of one."""
        return self.device_gib * GIB * min(1.0, self.gpus)

    @property
    def fits(self) -> bool:
        return self.device_gib <= 0 or self.peak <= self.capacity


def actor_estimates(cfg: RunConfig, device_gib: float, shape: ModelShape | None = None) -> dict[str, ActorEstimate]:
    """Each role's estimate (one actor of it) on a device of ``device_gib``."""
    shape = shape or model_shape(cfg.model)
    ref_shape = shape if cfg.reference.path is None else shape_of_path(cfg.reference.path, cfg.model.trust_remote_code)
    reward_params = 0
    for c in cfg.reward.components:
        if c.type == "model":
            s = shape if c.path is None else shape_of_path(c.path, cfg.model.trust_remote_code)
            reward_params += s.backbone_params + s.hidden  # a one-label score head
    reference = frozen_estimate("reference", cfg, ref_shape.params, ref_shape, ref_shape.vocab)
    learner = learner_estimate(cfg, shape)
    if cfg.placement.reference_in_learners:  # its weights stay resident beside the policy; its pass runs alone
        items = {**learner.items, "reference weights": reference.items["weights"]}
        learner = ActorEstimate(learner.name, items, max(learner.peak + reference.idle, learner.idle + reference.peak),
                                learner.idle + reference.idle)
    return {
        "learner": learner,
        "rollout": rollout_estimate(cfg, shape, device_gib or 0.0),
        "reference": reference,
        "reward": frozen_estimate("reward", cfg, reward_params, shape, 1),
    }


def plan_memory(cfg: RunConfig, plan: Plan, shape: ModelShape | None = None) -> list[BundleEstimate]:
    """One `BundleEstimate` per bundle that asks for GPUs; empty for a CPU-only plan."""
    shape = shape or model_shape(cfg.model)
    gib = {n.node_id: n.gpu_gib for n in plan.nodes}
    by_gib: dict[float, dict[str, ActorEstimate]] = {}
    out = []
    for group in plan.groups:
        for b, (bundle, node) in enumerate(zip(group.bundles, group.nodes)):
            if bundle.get("GPU", 0.0) <= 0:
                continue
            if gib[node] not in by_gib:  # vLLM's share depends on the device's memory
                by_gib[gib[node]] = actor_estimates(cfg, gib[node], shape)
            est = by_gib[gib[node]]
            label = next(n.label for n in plan.nodes if n.node_id == node)
            actors = [_named(est[s.role], s.name) for s in plan.slots if s.group == group.name and s.bundle == b]
            out.append(_combine(BundleEstimate(group.name, b, label, bundle["GPU"], gib[node], actors), group.colocated))
    return out


def _named(est: ActorEstimate, name: str) -> ActorEstimate:
    return ActorEstimate(name, est.items, est.peak, est.idle)


def _combine(bundle: BundleEstimate, colocated: bool) -> BundleEstimate:
    """Colocated: the peak of the two phases, each actor at its peak while the other idles."""
    if colocated and len(bundle.actors) > 1:
        learners = [a for a in bundle.actors if a.name.startswith("learner")]
        others = [a for a in bundle.actors if not a.name.startswith("learner")]
        turn = "generate" if any(a.name.startswith("rollout") for a in others) else "inference"
        bundle.phases = {
            "train": sum(a.peak for a in learners) + sum(a.idle for a in others),
            turn: sum(a.idle for a in learners) + sum(a.peak for a in others),
        }
        bundle.peak = max(bundle.phases.values())
    else:
        bundle.peak = sum(a.peak for a in bundle.actors)
    return bundle


# -- verdict and refusal ---------------------------------------------------------------------------


def refusal(cfg: RunConfig, bundles: list[BundleEstimate]) -> str | None:
    """None when every bundle fits; else what does not fit, by how much, and what to change."""
    over = [b for b in bundles if not b.fits]
    if not over:
        return None
    lines = [f"memory plan: {len(over)} GPU bundle{'s' * (len(over) != 1)} cannot fit"]
    for group in dict.fromkeys(b.group for b in over):  # the worst bundle of each group, and its fixes
        worst = max((b for b in over if b.group == group), key=lambda b: b.peak - b.capacity)
        lines.append(
            f"{worst.group} bundle {worst.bundle} on node {worst.node}, needs ~{_g(worst.peak)} GiB per device but "
            f"has {_g(worst.capacity)} GiB ({_items(worst)}); to fit, change one or more of:"
        )
        lines += [f"  - {fix}" for fix in _fixes(cfg, worst)]
    lines.append("or add --force to start anyway (docs/memory.md gives the formulas)")
    return "\n".join(lines)


def _fixes(cfg: RunConfig, bundle: BundleEstimate) -> list[str]:
    learner = cfg.learner
    roles = {a.name.split("-")[0] for a in bundle.actors}
    tries: list[tuple[str, RunConfig]] = []
    if "learner" in roles:
        if learner.zero_stage < 3 and learner.num_workers > 1:
            tries.append(("learner.zero_stage=3", _with(cfg, "learner", zero_stage=3)))
        if learner.offload == "none" and learner.zero_stage > 0:
            tries.append(("learner.offload=optimizer", _with(cfg, "learner", offload="optimizer")))
        if not learner.gradient_checkpointing:
            tries.append(("learner.gradient_checkpointing=true", _with(cfg, "learner", gradient_checkpointing=True)))
        if learner.micro_batch_size > 1 and not learner.max_tokens_per_micro_batch:
            tries.append((f"learner.micro_batch_size={learner.micro_batch_size // 2}",
                          _with(cfg, "learner", micro_batch_size=learner.micro_batch_size // 2)))
        if not learner.lora.enabled:
            lora = learner.lora.model_copy(update={"enabled": True})
            tries.append(("learner.lora.enabled=true", _with(cfg, "learner", lora=lora)))
    if "rollout" in roles and cfg.rollout.engine == "vllm" and bundle.phases:
        util = round(cfg.rollout.gpu_memory_utilization / 2, 2)
        tries.append((f"rollout.gpu_memory_utilization={util}", _with(cfg, "rollout", gpu_memory_utilization=util)))
    if "rollout" in roles and not bundle.phases:
        tp = 2 * cfg.rollout.tensor_parallel_size
        tries.append((f"rollout.tensor_parallel_size={tp} with placement.rollout.num_gpus={tp}",
                      _with(cfg, "rollout", tensor_parallel_size=tp)))
    fixes = []
    for text, changed in tries:
        est = actor_estimates(changed, bundle.device_gib)
        actors = [_named(est[a.name.split("-")[0]], a.name) for a in bundle.actors]
        after = _combine(BundleEstimate(bundle.group, bundle.bundle, bundle.node, bundle.gpus, bundle.device_gib,
                                        actors), bool(bundle.phases)).peak
        fixes.append(f"{text} (peak ~{_g(after)} GiB{', fits' if after <= bundle.capacity else ''})")
    if bundle.phases:
        fixes.append("placement.colocate=false (the learner and the engine on GPUs of their own)")
    if "rollout" in roles and cfg.rollout.engine == "hf":
        fixes.append("more rollout.num_workers (a smaller generate batch and KV cache per engine)")
    fixes.append("GPUs with more memory (--nodes NAME:CPUS:GPUS:GPU_GIB to plan for them)")
    return fixes


def _with(cfg: RunConfig, section: str, **update) -> RunConfig:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=update)})


# -- the table ------------------------------------------------------------------------------------


def memory_table(cfg: RunConfig, plan: Plan, bundles: list[BundleEstimate]) -> str:
    """What `rlhf-dist plan` prints under the placement table."""
    if not bundles:
        est = actor_estimates(cfg, 0.0)
        lines = ["memory: a CPU-only plan, no GPU bundles: every GPU figure is 0 GiB. Host memory per actor, "
                 f"by the same formulas (model.dtype={cfg.model.dtype}; docs/memory.md):"]
        lines += [f"  {role:<10} {_actor_line(est[role])}" for role in ("learner", "rollout", "reference", "reward")
                  if role != "reward" or any(c.type == "model" for c in cfg.reward.components)]
        return "\n".join(lines)
    lines = [f"memory per GPU bundle, GiB per device (model.dtype={cfg.model.dtype}, "
             f"{DTYPE_BYTES[cfg.model.dtype]} bytes; docs/memory.md):"]
    for b in bundles:
        device = f"{_g(b.device_gib * GIB)} GiB" if b.device_gib > 0 else "unknown memory (no verdict)"
        share = f", share {b.gpus:g}" if b.gpus < 1 else ""
        verdict = "" if b.device_gib <= 0 else ("  fits" if b.fits else "  DOES NOT FIT")
        phases = ""
        if b.phases:
            phases = " (colocated: max of " + ", ".join(f"{k} {_g(v)}" for k, v in b.phases.items()) + ")"
        lines.append(f"  {b.group} bundle {b.bundle}  node {b.node}  device {device}{share}  peak {_g(b.peak)}{phases}{verdict}")
        lines += [f"    {a.name:<12} {_actor_line(a)}" for a in b.actors]
    problem = refusal(cfg, bundles)
    lines.append("verdict: " + ("every GPU bundle fits" if problem is None else problem))
    return "\n".join(lines)


def _actor_line(a: ActorEstimate) -> str:
    items = "  ".join(f"{k} {_g(v)}" for k, v in a.items.items())
    return f"{items}  -> peak {_g(a.peak)}"


def _items(b: BundleEstimate) -> str:
    return "; ".join(f"{a.name}: " + ", ".join(f"{k} {_g(v)}" for k, v in a.items.items() if v) for a in b.actors)


def _g(value: float) -> str:
    """Bytes as GiB, 3 significant figures."""
    gib = value / GIB
    return f"{gib:.3g}"
