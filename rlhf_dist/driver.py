"""The driver: one RL step as named phases, read top to bottom.

    generate -> score -> reference -> values -> advantages -> train -> sync

It works on actor handles that `launch` creates (any objects with the same remote methods), moves
`Experience` batches between them, and keeps the generators' weights equal to the learner's.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from rlhf_dist.algorithms import AdaptiveKLController, FixedKLController
from rlhf_dist.config import RunConfig
from rlhf_dist.data import Prompt, PromptSampler
from rlhf_dist.experience import Experience
from rlhf_dist.metrics import MetricsLogger
from rlhf_dist.monitor import HackingMonitor
from rlhf_dist.ray_metrics import RayMetricsExporter
from rlhf_dist.rollout import Request, Sample, request_seed
from rlhf_dist.shaping import compute_advantages
from rlhf_dist.weight_sync import DEFAULT_BUCKET_BYTES, WeightSyncError, verify_checksums

log = logging.getLogger(__name__)

PHASES = ("generate", "score", "reference", "values", "advantages", "train", "sync")


class RewardHackingWarning(UserWarning):
    """The proxy reward and the gold reward disagree, or KL left its budget."""


class ActorFailed(RuntimeError):
    """A remote call failed; the message names the role."""


class ActorDied(ActorFailed):
    """An actor's process died (as opposed to its method raising)."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and how to continue (usually ``--resume``)."""


@dataclass
class Roles:
    """Actor handles per role, as built by `launch`."""

    rollout: list[Any]
    reward: list[Any]
    reference: list[Any]
    learners: list[Any]
    placement_groups: list[Any] = field(default_factory=list)  # removed with the actors

    def all(self) -> list[Any]:
        return [*self.rollout, *self.reward, *self.reference, *self.learners]


def gather(refs: list[Any], role: str) -> list[Any]:
    """``ray.get`` on a list, naming the role when a remote call raised."""
    try:
        # Fail as soon as any call fails: the other calls may be waiting on the failed one (a
        # collective with a dead rank) and would never return.
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        raise ActorFailed(f"{role} failed: {exc.cause if exc.cause is not None else exc}") from exc
    except ray.exceptions.RayActorError as exc:
        raise ActorDied(role, f"{role} actor died: {exc}") from exc


def wait_until_alive(actor: Any, role: str, timeout_s: float = 600.0) -> None:
    """Block until a restarting actor answers. While Ray restarts it, calls fail fast with
    ``ActorUnavailableError``; once it is out of restarts they fail with ``ActorDiedError``."""
    deadline = time.time() + timeout_s
    while True:
        try:
            ray.get(actor.ready.remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.time() > deadline:
                raise ActorDied(role, f"{role} actor did not come back within {timeout_s:.0f}s of a restart") from None
            time.sleep(0.5)
        except ray.exceptions.RayActorError as exc:
            raise ActorDied(role, f"{role} actor died and was not restarted: {exc}") from exc


class Driver:
    def __init__(
        self,
        cfg: RunConfig,
        roles: Roles,
        prompts: list[Prompt],
        pad_token_id: int,
        probe_ids: list[int],
        metrics: MetricsLogger,
        sync_address: tuple[str, int],
        run_dir: Path | None = None,
    ):
        self.cfg, self.roles, self.prompts, self.pad = cfg, roles, prompts, pad_token_id
        self.probe_ids, self.metrics, self.sync_address = probe_ids, metrics, sync_address
        self.run_dir = run_dir
        self.sampler = PromptSampler(len(prompts), seed=cfg.seed, shuffle=cfg.data.shuffle)
        kl = cfg.algorithm.kl
        self.kl_ctl = AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.adaptive else FixedKLController(kl.coef)
        self.policy_version = 0
        mon = cfg.monitor
        self.monitor = HackingMonitor(mon.window, mon.min_gold_drop, mon.kl_budget)
        self.ray_metrics = RayMetricsExporter(cfg.name)
        self.timings: dict[str, float] = {}
        self.buckets: list = []
        self.records: list[dict[str, float]] = []
        self.sync_generation = 0
        self.counters = {"faults/actor_restarts": 0, "train/skipped_steps": 0}
        self.nonfinite_in_a_row = 0

    # -- the loop -------------------------------------------------------------------------------

    def run(self, start_step: int = 0) -> list[dict[str, float]]:
        """Steps ``start_step`` .. ``cfg.steps - 1``; after `restore`, start at the checkpoint's step."""
        self.setup_weight_sync()
        if start_step > 0:  # the generators hold the initial weights; send the restored ones
            self.sync_weights(new_version=False)
        for step in range(start_step, self.cfg.steps):
            try:
                self.records.append(self.step(step))
            except ActorDied as exc:  # a learner, or an actor out of restarts
                raise RunFailed(f"{exc}\nThe run stopped at step {step}. {self.resume_hint()}") from exc
            if self.checkpoint_due(step + 1):
                started = time.perf_counter()
                path = self.save_checkpoint(step + 1)
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                self.metrics.note(f"checkpoint {path} ({size / 1e6:.1f} MB, {time.perf_counter() - started:.2f} s)")
        return self.records

    def step(self, step: int) -> dict[str, float]:
        self.timings = {}
        started = time.time()
        indices = self.sampler.next_batch(self.cfg.rollout.prompts_per_step)
        with self.phase("generate"):
            exp, texts = self.recovering(lambda: self.generate(step, indices))
            self.set_generators_awake(False)
        with self.phase("score"):
            reward_stats = self.recovering(lambda: self.score(exp, texts))
        with self.phase("reference"):
            exp.ref_logprobs = self.recovering(lambda: self.reference(exp))
        with self.phase("values"):
            exp.values = self.learner_call(lambda: self.values(exp), step)
        with self.phase("advantages"):
            adv_stats = compute_advantages(exp, self.cfg.algorithm, self.kl_ctl.value, self.cfg.rollout.samples_per_prompt)
        with self.phase("train"):
            train_stats = self.learner_call(lambda: self.train(exp), step)
        self.count_nonfinite(step, train_stats)
        with self.phase("sync"):
            self.set_generators_awake(True)
            sync_stats = self.recovering(lambda: self.learner_call(self.sync_weights, step))
        self.kl_ctl.update(adv_stats["kl/mean"], exp.batch_size)
        record = self.step_metrics(step, exp, started, reward_stats, adv_stats, train_stats, sync_stats)
        record["data/prompts_consumed"] = self.sampler.consumed
        record.update(self.counters)
        record["monitor/hacking_alarm"] = self.check_reward_hacking(step, record)
        self.metrics.log(step, {k: v for k, v in record.items() if k != "step"})
        self.ray_metrics.export(record)
        self.log_samples(step, exp, texts)
        return record

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start

    # -- phases ---------------------------------------------------------------------------------

    def generate(self, step: int, indices: list[int]) -> tuple[Experience, dict[str, list[str]]]:
        """Sample ``samples_per_prompt`` responses for each of this step's prompts."""
        rollout = self.cfg.rollout
        requests = [
            Request(i, s, self.prompts[i].ids, request_seed(self.cfg.seed, step, i, s))
            for i in indices
            for s in range(rollout.samples_per_prompt)
        ]
        # Whole groups per worker, so one worker's batch shares prompt prefixes.
        per_worker = [requests[w :: len(self.roles.rollout)] for w in range(len(self.roles.rollout))]
        results = gather(
            [w.generate.remote(reqs, rollout.sampling) for w, reqs in zip(self.roles.rollout, per_worker) if reqs],
            "rollout",
        )
        by_key = {(s.prompt_index, s.sample_index): s for part in results for s in part}
        samples = [by_key[(r.prompt_index, r.sample_index)] for r in requests]
        texts = {
            "prompts": [self.prompts[s.prompt_index].text for s in samples],
            "responses": [s.text for s in samples],
        }
        return self.to_experience(samples), texts

    def score(self, exp: Experience, texts: dict[str, list[str]]) -> dict[str, float]:
        shards = _chunks(list(range(exp.batch_size)), len(self.roles.reward))
        results = gather(
            [
                scorer.score.remote([texts["prompts"][i] for i in rows], [texts["responses"][i] for i in rows])
                for scorer, rows in zip(self.roles.reward, shards)
            ],
            "reward scorer",
        )
        exp.scores = torch.cat([r.total for r in results]).float()
        exp.reward_components = {k: torch.cat([r.components[k] for r in results]) for k in results[0].components}
        stats = {"reward/mean": float(exp.scores.mean()), "reward/std": float(exp.scores.std())}
        stats.update({f"reward/{k}": float(v.mean()) for k, v in exp.reward_components.items()})
        if results[0].gold is not None:
            stats["reward/gold_mean"] = float(torch.cat([r.gold for r in results]).mean())
        return stats

    def reference(self, exp: Experience) -> torch.Tensor:
        shards = exp.split(len(self.roles.reference)) if exp.batch_size % len(self.roles.reference) == 0 else [exp]
        refs = [actor.logprobs.remote(shard) for actor, shard in zip(self.roles.reference, shards)]
        return torch.cat(gather(refs, "reference"))

    def values(self, exp: Experience) -> torch.Tensor | None:
        if self.cfg.algorithm.name != "ppo":
            return None
        shards = exp.split(len(self.roles.learners))
        return torch.cat(gather([l.values.remote(s) for l, s in zip(self.roles.learners, shards)], "learner"))

    def train(self, exp: Experience) -> dict[str, float]:
        shards = exp.split(len(self.roles.learners))
        kl_coef = self.kl_ctl.value
        per_rank = gather([l.train.remote(s, kl_coef) for l, s in zip(self.roles.learners, shards)], "learner")
        tokens = sum(r.pop("num_tokens") for r in per_rank)
        abs_diff = sum(r.pop("logprob_abs_diff_sum") for r in per_rank)
        diff_max = max(r.pop("logprob_abs_diff_max") for r in per_rank)
        stats = {k: sum(r[k] for r in per_rank) / len(per_rank) for k in per_rank[0]}
        stats["rollout/logprob_abs_diff"] = abs_diff / max(tokens, 1.0)
        stats["rollout/logprob_abs_diff_max"] = diff_max
        return stats

    def set_generators_awake(self, awake: bool) -> None:
        """Colocated runs (``placement.colocate``): the vLLM engines sleep after generating, freeing
        the GPU memory the learners train in, and wake before the weight sync. No-op otherwise."""
        if not self.cfg.placement.colocate:
            return
        if awake:
            gather([g.wake_up.remote() for g in self.roles.rollout], "rollout (wake up)")
        else:
            gather([g.sleep.remote() for g in self.roles.rollout], "rollout (sleep)")

    # -- weight sync ----------------------------------------------------------------------------

    def setup_weight_sync(self, generation: int = 0) -> None:
        """Open the sync group (learner rank 0 + every generator) and plan the buckets."""
        host, port = self.sync_address
        world = 1 + len(self.roles.rollout) * self.cfg.rollout.tensor_parallel_size
        # The learners' backend: nccl when they see a GPU. Declared GPUs (num_gpus) need not be real ones.
        backend = gather([self.roles.learners[0].sync_backend.remote()], "learner")[0]
        calls = [self.roles.learners[0].init_weight_sync.remote(host, port, world, generation)]
        calls += [
            g.init_weight_sync.remote(host, port, 1 + i * self.cfg.rollout.tensor_parallel_size, world, backend, generation)
            for i, g in enumerate(self.roles.rollout)
        ]
        gather(calls, "weight sync setup")
        self.buckets = gather([self.roles.learners[0].weight_buckets.remote(DEFAULT_BUCKET_BYTES)], "learner")[0]

    def sync_weights(self, new_version: bool = True) -> dict[str, float]:
        """Send the learner's weights to every generator; verify checksums and a probe.

        ``new_version=False`` re-sends the current weights (after a restart or a resume) without
        bumping ``policy_version``.
        """
        start = time.perf_counter()
        sends = [l.broadcast_weights.remote(self.buckets, self.probe_ids) for l in self.roles.learners]
        receives = [g.receive_weights.remote(self.buckets, self.probe_ids) for g in self.roles.rollout]
        try:
            sent, learner_probe = gather(sends, "learner (weight sync)")[0]
        except ActorFailed:
            gather(receives, "rollout (weight sync)")  # a generator that died surfaces as ActorDied
            raise
        received = gather(receives, "rollout (weight sync)")
        seconds = time.perf_counter() - start
        self.policy_version += int(new_version)
        verify_checksums(sent, {f"rollout-{i}": sums for i, (sums, _) in enumerate(received)}, self.policy_version)
        want = torch.tensor(learner_probe)
        probe_diff = max(float((torch.tensor(probe) - want).abs().max()) for _, probe in received)
        tolerance = 1e-4 if self.cfg.model.dtype == "float32" else 2e-2
        if probe_diff > tolerance:
            raise WeightSyncError(
                f"after sync {self.policy_version}, generator log-probs on the probe differ from the "
                f"learner's by {probe_diff:.2e} (> {tolerance:g}); the engine did not load what was sent"
            )
        nbytes = sum(b.nbytes for b in self.buckets)
        return {
            "sync/verified": 1.0,
            "sync/seconds": seconds,
            "sync/mb_per_s": nbytes / 1e6 / max(seconds, 1e-9),
            "sync/probe_max_diff": probe_diff,
        }

    # -- faults -------------------------------------------------------------------------------

    def recovering(self, work):
        """Run one phase's remote work; if a rollout, reward or reference actor died, wait for Ray
        to restart it, re-sync the generators' weights, and redo the phase.

        Sampling is seeded per request and the step's prompts are drawn before the phase, so the
        redone work is the work that was lost: nothing is skipped or counted twice.
        """
        limit = self.cfg.recovery.max_actor_restarts
        for attempt in range(limit + 1):
            try:
                return work()
            except ActorDied as exc:
                if exc.role.startswith("learner") or attempt == limit:
                    raise
                log.warning("%s; waiting for Ray to restart it, then redoing the phase", exc)
                self.counters["faults/actor_restarts"] += 1
                self.after_restart()
        raise AssertionError("unreachable")

    def after_restart(self) -> None:
        """Wait until every restartable actor answers, rebuild the sync group, re-send the weights."""
        for role, actors in (("rollout", self.roles.rollout), ("reward scorer", self.roles.reward),
                             ("reference", self.roles.reference)):
            for actor in actors:
                wait_until_alive(actor, role)
        # The sync group has fixed membership: every member rebuilds it under a new generation.
        self.sync_generation += 1
        self.set_generators_awake(True)  # the restarted one is awake, the others may sleep
        self.setup_weight_sync(self.sync_generation)
        self.sync_weights(new_version=False)

    def learner_call(self, work, step: int):
        """Learner work: a dead learner ends the run, pointing at the checkpoint to resume from."""
        try:
            return work()
        except ActorDied as exc:
            if not exc.role.startswith("learner"):
                raise
            raise RunFailed(f"{exc}\nThe learner world cannot continue without it; the run stopped at step {step}. "
                            + self.resume_hint()) from exc

    def count_nonfinite(self, step: int, train_stats: dict[str, float]) -> None:
        """A step whose loss was NaN/inf had its update skipped by the learners; count it, and stop
        after ``recovery.max_nonfinite_steps`` in a row."""
        bad = train_stats.get("train/nonfinite_loss", 0.0) > 0 or train_stats.get("train/skipped_updates", 0.0) > 0
        if not bad:
            self.nonfinite_in_a_row = 0
            return
        self.counters["train/skipped_steps"] += 1
        self.nonfinite_in_a_row += 1
        limit = self.cfg.recovery.max_nonfinite_steps
        log.warning("step %d: the loss was NaN/inf; its update was skipped (%d in a row)", step, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= limit:
            raise RunFailed(
                f"the loss was NaN or inf in {limit} steps in a row (steps {step - limit + 1}..{step}); each update "
                "was skipped, so the policy is unchanged since. Check the rewards for huge or non-finite values, "
                "lower learner.optimizer.lr, or raise recovery.max_nonfinite_steps. " + self.resume_hint()
            )

    def resume_hint(self) -> str:
        from rlhf_dist.checkpoint import checkpoint_dirs

        done = checkpoint_dirs(self.run_dir) if self.run_dir is not None else []
        if not done:
            return "No checkpoint was written yet (see checkpoint.every)."
        return f"The last complete checkpoint is {done[-1]}; continue with: rlhf-dist train --resume {self.run_dir}"

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_due(self, steps_done: int) -> bool:
        every = self.cfg.checkpoint.every
        return self.run_dir is not None and (steps_done == self.cfg.steps or (every > 0 and steps_done % every == 0))

    def save_checkpoint(self, steps_done: int) -> Path:
        """Write ``checkpoints/step-NNNNNN`` atomically; on failure the previous one stays as it was."""
        from rlhf_dist.checkpoint import rng_state, save_tree, write_checkpoint, write_json

        def write(tmp: Path) -> None:
            gather([l.save_checkpoint.remote(str(tmp)) for l in self.roles.learners], "learner (checkpoint)")
            (tmp / "rng").mkdir(exist_ok=True)
            save_tree(rng_state(), tmp / "rng" / "driver.safetensors")
            others = [("rollout", self.roles.rollout), ("reward", self.roles.reward), ("reference", self.roles.reference)]
            for role, actors in others:
                states = self.recovering(lambda: gather([a.rng_state.remote() for a in actors], role))
                for i, state in enumerate(states):
                    save_tree(state, tmp / "rng" / f"{role}-{i}.safetensors")
            write_json(tmp / "driver_state.json", self.state_dict(steps_done))  # last: marks it whole

        return write_checkpoint(self.run_dir, steps_done, self.cfg.checkpoint.keep_last, write, (OSError, ActorFailed))

    def state_dict(self, steps_done: int) -> dict:
        return {
            "steps_done": steps_done,
            "policy_version": self.policy_version,
            "kl_controller": self.kl_ctl.state_dict(),
            "sampler": self.sampler.state_dict(),
            "monitor": self.monitor.state_dict(),
            "counters": dict(self.counters),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "num_generators": len(self.roles.rollout),
            "num_learners": len(self.roles.learners),
        }

    def restore(self, ckpt: Path) -> int:
        """Load a checkpoint into the driver and every actor; returns the step to continue from."""
        import json

        from rlhf_dist.checkpoint import CheckpointError, load_tree, set_rng_state

        state = json.loads((ckpt / "driver_state.json").read_text())
        if state["num_learners"] != len(self.roles.learners):
            raise CheckpointError(
                f"{ckpt} was written by {state['num_learners']} learners, this run has {len(self.roles.learners)}; "
                "resume with the same learner.num_workers (ZeRO partitions are per rank)"
            )
        gather([l.load_checkpoint.remote(str(ckpt)) for l in self.roles.learners], "learner (load checkpoint)")
        set_rng_state(load_tree(ckpt / "rng" / "driver.safetensors"))
        for role, actors in (("rollout", self.roles.rollout), ("reward", self.roles.reward), ("reference", self.roles.reference)):
            for i, actor in enumerate(actors):
                path = ckpt / "rng" / f"{role}-{i}.safetensors"
                if path.exists():
                    gather([actor.set_rng_state.remote(load_tree(path))], role)
        self.policy_version = state["policy_version"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.sampler.load_state_dict(state["sampler"])
        self.monitor.load_state_dict(state["monitor"])
        self.counters.update(state["counters"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        return state["steps_done"]

    # -- bookkeeping ----------------------------------------------------------------------------

    def to_experience(self, samples: list[Sample]) -> Experience:
        prompts = [self.prompts[s.prompt_index].ids for s in samples]
        width = max(len(p) for p in prompts)
        length = max(1, max(len(s.response_ids) for s in samples))
        return Experience(
            prompt_ids=torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts]),
            prompt_mask=torch.tensor([[0.0] * (width - len(p)) + [1.0] * len(p) for p in prompts]),
            response_ids=torch.tensor([s.response_ids + [self.pad] * (length - len(s.response_ids)) for s in samples]),
            response_mask=torch.tensor([[1.0] * len(s.response_ids) + [0.0] * (length - len(s.response_ids)) for s in samples]),
            rollout_logprobs=torch.tensor([s.logprobs + [0.0] * (length - len(s.logprobs)) for s in samples]),
            prompt_index=torch.tensor([s.prompt_index for s in samples]),
            policy_version=self.policy_version,
        )

    def check_reward_hacking(self, step: int, record: dict[str, float]) -> float:
        alarm = self.monitor.update(record["reward/mean"], record.get("reward/gold_mean"), record["kl/mean"])
        if alarm.raised:
            warnings.warn(f"reward-hacking alarm at step {step}: {alarm.reason}", RewardHackingWarning, stacklevel=2)
        return float(alarm.raised)

    def step_metrics(self, step, exp, started, *parts: dict[str, float]) -> dict[str, float]:
        step_time = time.time() - started
        record: dict[str, float] = {"step": step, "policy_version": exp.policy_version}
        for part in parts:
            record.update(part)
        record.update({f"timing/{name}": seconds for name, seconds in self.timings.items()})
        record["timing/step"] = step_time
        record["timing/overhead_frac"] = self.overhead_fraction(started, step_time)
        record["kl/coef"] = self.kl_ctl.value
        record["rollout/response_len_mean"] = float(exp.response_mask.sum(-1).mean())
        sampling = self.cfg.rollout.sampling
        record["rollout/truncated_sampling"] = float(sampling.top_p < 1.0 or sampling.top_k > 0)
        record["throughput/tokens_per_s"] = exp.num_response_tokens / max(step_time, 1e-9)
        return record

    def overhead_fraction(self, started: float, step_time: float) -> float:
        """Share of the step when no actor was computing (CONTRACTS: union of compute intervals)."""
        intervals = sorted(
            (max(a, started), b)
            for part in gather([actor.pop_intervals.remote() for actor in self.roles.all()], "actors")
            for a, b in part
            if b > started
        )
        busy, end = 0.0, started
        for a, b in intervals:
            if b > end:
                busy += b - max(a, end)
                end = b
        return max(0.0, 1.0 - busy / max(step_time, 1e-9))

    def log_samples(self, step: int, exp: Experience, texts: dict[str, list[str]]) -> None:
        every = self.cfg.logging.samples_every
        if not every or step % every:
            return
        rows = [
            {"prompt": texts["prompts"][i], "response": texts["responses"][i], "reward": float(exp.scores[i])}
            for i in range(min(4, exp.batch_size))
        ]
        self.metrics.log_samples(step, rows)


def _chunks(items: list[int], n: int) -> list[list[int]]:
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]
