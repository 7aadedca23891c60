"""The driver: one RL step as named phases, read top to bottom.

    [eval] -> generate -> score -> reference -> values -> advantages -> train -> sync

(eval, on the held-out prompts, at step 0, every ``eval.every`` steps and after the last step.)

generate, score and reference make the step's batch (`rlhf_dist.driver.batch_producer`): now, on-policy, or
with ``rollout.async_steps = k`` in a background thread during the k steps before, at most k
policy versions behind; the learner then adds its own (proximal) log-probs before the values.

It works on actor handles that `launch` creates (any objects with the same remote methods), moves
`Experience` batches between them, and keeps the generators' weights equal to the learner's
through a `WeightSync`. Calling actors (`gather`, the errors) lives in `rlhf_dist.driver.remote_calls`; what a
checkpoint holds of the driver lives in `rlhf_dist.driver.run_state`.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from rlhf_dist.algorithms import AdaptiveKLController, FixedKLController
from rlhf_dist.checkpoints.files import checkpoint_dirs
from rlhf_dist.config import RunConfig
from rlhf_dist.data import Prompt, PromptSampler
from rlhf_dist.driver.batch_producer import RolloutPipeline
from rlhf_dist.driver.evaluation import Evaluator
from rlhf_dist.driver.hacking_alarm import HackingMonitor
from rlhf_dist.driver.health import HealthMonitor, TrainingHealthWarning
from rlhf_dist.driver.learner_group import LearnerGroup
from rlhf_dist.driver.remote_calls import ActorDied, Roles, RunFailed, gather, wait_until_alive
from rlhf_dist.driver.run_state import LoopState, restore_run_checkpoint, save_run_checkpoint
from rlhf_dist.driver.shaping import compute_advantages
from rlhf_dist.experience import Experience, StepBatch
from rlhf_dist.metrics.logger import MetricsLogger
from rlhf_dist.metrics.ray_gauges import RayMetricsExporter
from rlhf_dist.metrics.timing import timed
from rlhf_dist.weight_sync.controller import WeightSync, WeightSyncError

log = logging.getLogger(__name__)

# + "eval" when due; async adds "logprobs" (the proximal log-probs) and "rollout_wait"
PHASES = ("generate", "score", "reference", "values", "advantages", "train", "sync")


class RewardHackingWarning(UserWarning):
    """The proxy reward and the gold reward disagree, or KL left its budget."""


class Driver:
    # Set by the launcher on SIGTERM (preemption): `run` stops after the current step.
    stop_requested: bool = False

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
        eval_prompts: list[Prompt] | None = None,
        data_stats: dict[str, float] | None = None,
    ):
        self.cfg, self.roles, self.prompts, self.pad = cfg, roles, prompts, pad_token_id
        self.metrics, self.run_dir = metrics, run_dir
        self.data_stats = dict(data_stats or {})  # constants of the data (data/truncated_prompts), on every step
        kl, mon = cfg.algorithm.kl, cfg.monitor
        self.state = LoopState(
            kl_ctl=AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.adaptive else FixedKLController(kl.coef),
            sampler=PromptSampler(len(prompts), seed=cfg.seed, shuffle=cfg.data.shuffle),
            monitor=HackingMonitor(mon.window, mon.min_gold_drop, mon.kl_budget),
            health=HealthMonitor(mon, cfg.rollout.samples_per_prompt),
        )
        self.learners = LearnerGroup(roles.learners)
        self.sync = WeightSync(roles.learners, roles.rollout, sync_address, probe_ids,
                               cfg.rollout.tensor_parallel_size, cfg.model.dtype, roles.plan)
        self.rollouts = RolloutPipeline(cfg, roles, prompts, pad_token_id, self.state.sampler,
                                        version=lambda: self.state.policy_version,
                                        after_generate=lambda: self.set_generators_awake(False),
                                        errors_path=run_dir / "rollout_errors.jsonl" if run_dir is not None else None)
        self.evaluator = Evaluator(cfg, eval_prompts or [], roles, run_dir, metrics)
        self.ray_metrics = RayMetricsExporter(cfg.name)
        self.timings: dict[str, float] = {}
        self.records: list[dict[str, float]] = []

    @property
    def policy_version(self) -> int:
        """The learner version the generators hold (bumped by every sync)."""
        return self.state.policy_version

    # -- the loop -------------------------------------------------------------------------------

    def run(self, start_step: int = 0) -> list[dict[str, float]]:
        """Steps ``start_step`` .. ``cfg.steps - 1``; after `restore`, start at the checkpoint's step."""
        self.sync.open()
        if start_step > 0:  # the generators hold the initial weights; send the restored ones
            self.sync.push(self.policy_version)
        try:
            return self.run_steps(start_step)
        finally:
            self.rollouts.close()

    def run_steps(self, start_step: int) -> list[dict[str, float]]:
        for step in range(start_step, self.cfg.steps):
            try:
                self.records.append(self.step(step))
            except ActorDied as exc:  # a learner, or an actor out of restarts
                raise RunFailed(f"{exc}\nThe run stopped at step {step}. {self.resume_hint()}") from exc
            stopping = self.stop_requested  # SIGTERM: this step is done; checkpoint and stop
            if self.checkpoint_due(step + 1) or (stopping and self.cfg.checkpoint.on_sigterm and self.run_dir):
                started = time.perf_counter()
                try:
                    path = self.save_checkpoint(step + 1)
                except (OSError, RuntimeError) as exc:  # a full disk, a lost mount: say what is safe and go on from it
                    raise RunFailed(f"writing the checkpoint of step {step + 1} failed ({type(exc).__name__}: {exc}); "
                                    f"it is incomplete and will not be resumed from. {self.resume_hint()}") from exc
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                self.metrics.note(f"checkpoint {path} ({size / 1e6:.1f} MB, {time.perf_counter() - started:.2f} s)")
            if stopping:
                return self.records
        if self.evaluator.enabled:  # the final policy, after the last sync: a row of its own
            final = {"step": self.cfg.steps, **self.recovering(lambda: self.evaluate(self.cfg.steps))}
            self.metrics.log(self.cfg.steps, final, quiet=True)
            self.ray_metrics.export(final)
        return self.records

    def step(self, step: int) -> dict[str, float]:
        self.timings = {}
        started = time.time()
        eval_stats = {}
        if self.evaluator.due(step):  # the weights the generators hold as the step starts
            with self.phase("eval"):
                eval_stats = self.recovering(lambda: self.evaluate(step))
        with self.phase(self.waiting):  # on-policy: generate, score and reference happen here
            produced = self.rollouts.take(step, self.recovering)
        self.rollouts.launch_ahead(step)  # async: the next batches, while this one trains
        self.timings.update(produced.timings)
        batch, exp = produced.batch, produced.batch.exp
        staleness = (self.policy_version - exp.policy_versions).float()  # versions behind the learner
        produced.stats.update({"rollout/staleness_mean": float(staleness.mean()),
                               "rollout/staleness_max": float(staleness.max())})
        if self.rollouts.ahead:  # the learner's log-probs before its update: the proximal policy
            with self.phase("logprobs"):
                exp.old_logprobs = self.learner_call(lambda: self.learners.logprobs(exp), step)
        with self.phase("values"):
            exp.values = self.learner_call(lambda: self.values(exp), step)
        with self.phase("advantages"):
            kl_ctl = self.state.kl_ctl
            adv_stats = compute_advantages(exp, self.cfg.algorithm, kl_ctl.value, self.cfg.rollout.samples_per_prompt)
            produced.zero_filler_advantages(self.cfg.rollout.samples_per_prompt)
        with self.phase("train"):
            train_stats = self.learner_call(lambda: self.learners.train(exp, kl_ctl.value), step)
        health = self.check_health(step, adv_stats, train_stats, exp)  # first: a NaN stop can then name it
        self.count_nonfinite(step, train_stats)
        with self.phase(self.waiting):
            self.finish_rollouts()
        with self.phase("sync"):
            self.set_generators_awake(True)
            sync_stats = self.recovering(lambda: self.learner_call(lambda: self.sync_weights_of(step), step))
        kl_ctl.update(adv_stats["kl/mean"], exp.batch_size)
        record = self.step_metrics(step, exp, started, eval_stats, produced.stats, adv_stats, train_stats, sync_stats,
                                   health)
        self.finish_step(step, record, batch)
        return record

    def phase(self, name: str | None):
        """Time the block as ``timing/<name>`` (added up when a phase runs twice; None: untimed)."""
        return timed(self.timings, name)

    @property
    def waiting(self) -> str | None:
        """Async: the time the loop waits for batches produced in the background, ``rollout_wait``
        (their own generate/score/reference times overlap training and are logged with the batch)."""
        return "rollout_wait" if self.rollouts.ahead else None

    # -- phases ---------------------------------------------------------------------------------

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out eval at the generators' current weights; one line for the user."""
        stats = self.evaluator.run(step)
        shown = "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in stats.items())
        self.metrics.note(f"eval at step {step}: {shown}")
        return stats

    def finish_rollouts(self) -> None:
        """Async: wait for the batches produced in the background. If an actor died there, recover
        (as for any phase) and produce them again after the sync, at the new weights."""
        try:
            self.rollouts.finish()
        except ActorDied as exc:
            if exc.role.startswith("learner") or self.state.counters["faults/actor_restarts"] >= self.cfg.recovery.max_actor_restarts:
                raise
            log.warning("%s; waiting for Ray to restart it, then producing the next batch again", exc)
            self.state.counters["faults/actor_restarts"] += 1
            self.after_restart()

    def values(self, exp: Experience) -> torch.Tensor | None:
        return self.learners.values(exp) if self.cfg.algorithm.name == "ppo" else None

    def check_health(self, step: int, adv_stats: dict, train_stats: dict, exp: Experience) -> dict[str, float]:
        """The collapse and no-signal alarms (rlhf_dist/driver/health.py): metrics, and a warning each."""
        stats, lines = self.state.health.check(step, adv_stats["kl/token_mean"], train_stats.get("policy/entropy"),
                                               exp.scores)
        for line in lines:
            warnings.warn(line, TrainingHealthWarning, stacklevel=2)
        return stats

    def sync_weights_of(self, step: int) -> dict[str, float]:
        """`sync_weights`; a sync check that fails right after an alarm of divergence is reported as
        the divergence it most likely is, not as a transport fault."""
        try:
            return self.sync_weights()
        except WeightSyncError as exc:
            reason = self.state.health.diverged
            if not reason:
                raise
            raise RunFailed(
                f"the policy diverged at step {step}: {reason}. The weight sync after it failed too ({exc}), as "
                f"exploding or non-finite weights make it. {self.resume_hint()}"
            ) from exc

    def sync_weights(self) -> dict[str, float]:
        """Send the trained weights to the generators as the next policy version."""
        stats = self.sync.push(self.policy_version + 1)
        self.state.policy_version += 1
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
                self.state.counters["faults/actor_restarts"] += 1
                self.after_restart()
        raise AssertionError("unreachable")

    def after_restart(self) -> None:
        """Wait until every restartable actor answers, rebuild the sync group, re-send the weights."""
        for role, actors in self.roles.restartable():
            for actor in actors:
                wait_until_alive(actor, role)
        self.set_generators_awake(True)  # the restarted one is awake, the others may sleep
        self.sync.reopen()  # fixed membership: every member rebuilds the group
        self.sync.push(self.policy_version)

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
            self.state.nonfinite_in_a_row = 0
            return
        self.state.counters["train/skipped_steps"] += 1
        self.state.nonfinite_in_a_row += 1
        limit = self.cfg.recovery.max_nonfinite_steps
        log.warning("step %d: the loss (policy or critic) was NaN/inf; its update was skipped (%d in a row)", step,
                    self.state.nonfinite_in_a_row)
        if self.state.nonfinite_in_a_row >= limit:
            steps = f"{limit} steps in a row (steps {step - limit + 1}..{step})"
            if diverged := self.state.health.diverged:  # an alarm said why before the losses broke
                raise RunFailed(
                    f"the policy diverged: {diverged}; then the loss was NaN or inf in {steps}. Lower "
                    f"learner.optimizer.lr (now {self.cfg.learner.optimizer.lr:g}). " + self.resume_hint()
                )
            raise RunFailed(
                f"the loss was NaN or inf in {steps}; each update was skipped, so the policy is unchanged since. Check "
                "the rewards for huge or non-finite values, lower learner.optimizer.lr, or raise "
                "recovery.max_nonfinite_steps. " + self.resume_hint()
            )

    def resume_hint(self) -> str:
        done = checkpoint_dirs(self.run_dir) if self.run_dir is not None else []
        if not done:
            return "No checkpoint was written yet (see checkpoint.every)."
        return f"The last complete checkpoint is {done[-1]}; continue with: rlhf-dist train --resume {self.run_dir}"

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_due(self, steps_done: int) -> bool:
        every = self.cfg.checkpoint.every
        return self.run_dir is not None and (steps_done == self.cfg.steps or (every > 0 and steps_done % every == 0))

    def save_checkpoint(self, steps_done: int) -> Path:
        return save_run_checkpoint(self.run_dir, steps_done, self.cfg.checkpoint.keep_last, self.state, self.roles,
                                   self.recovering, also=self.rollouts.save_ready)

    def restore(self, ckpt: Path) -> int:
        """Load a checkpoint into the driver and every actor; returns the step to continue from."""
        steps_done = restore_run_checkpoint(ckpt, self.state, self.roles)
        self.rollouts.load_ready(ckpt)  # async: the batches produced ahead of the checkpoint
        return steps_done

    # -- bookkeeping ----------------------------------------------------------------------------

    def finish_step(self, step: int, record: dict[str, float], batch: StepBatch) -> None:
        """Counters and the hacking alarm into the record, then log it everywhere."""
        record["data/prompts_consumed"] = self.state.sampler.consumed
        record.update(self.data_stats)
        record.update(self.state.counters)
        record["monitor/hacking_alarm"] = self.check_reward_hacking(step, record)
        self.metrics.log(step, {k: v for k, v in record.items() if k != "step"})
        self.ray_metrics.export(record)
        self.log_samples(step, batch)

    def check_reward_hacking(self, step: int, record: dict[str, float]) -> float:
        alarm = self.state.monitor.update(record["reward/mean"], record.get("reward/gold_mean"), record["kl/mean"])
        if alarm.raised:
            warnings.warn(f"reward-hacking alarm at step {step}: {alarm.reason}", RewardHackingWarning, stacklevel=2)
        return float(alarm.raised)

    def step_metrics(self, step, exp, started, *parts: dict[str, float]) -> dict[str, float]:
        step_time = time.time() - started
        record: dict[str, float] = {"step": step, "policy_version": int(exp.policy_versions.min())}
        for part in parts:
            record.update(part)
        record.update({f"timing/{name}": seconds for name, seconds in self.timings.items()})
        record["timing/step"] = step_time
        record["timing/overhead_frac"] = self.overhead_fraction(started, step_time)
        record["kl/coef"] = self.state.kl_ctl.value
        record["rollout/response_len_mean"] = float(exp.response_mask.sum(-1).mean())
        record["rollout/prompt_len_mean"] = float(exp.prompt_mask.sum(-1).float().mean())
        sampling = self.cfg.rollout.sampling
        record["rollout/truncated_sampling"] = float(sampling.top_p < 1.0 or sampling.top_k > 0)
        record["throughput/tokens_per_s"] = exp.num_sampled_tokens / max(step_time, 1e-9)
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

    def log_samples(self, step: int, batch: StepBatch) -> None:
        every = self.cfg.logging.samples_every
        if not every or step % every:
            return
        rows = [
            {"prompt": batch.prompts[i], "response": batch.responses[i], "reward": float(batch.exp.scores[i]),
             **(batch.turns[i] if batch.turns else {})}
            for i in range(min(4, batch.exp.batch_size))
        ]
        self.metrics.log_samples(step, rows)
