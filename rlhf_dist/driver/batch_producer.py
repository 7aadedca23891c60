"""Producing each step's batch: generate -> score -> reference, on-policy or ahead of the learner.

On-policy (``rollout.async_steps = 0``) the driver asks for step t's batch and it is produced there
and then, at the weights the generators hold. With ``async_steps = k >= 1`` the batches of steps
t+1 .. t+k are produced in a background thread while the learners train on step t; the driver
waits for that production to end before it syncs weights, so a batch is produced at one policy
version, and the batch of step t+k is at most k versions behind the learner that trains on it.

Dynamic sampling (DAPO) is part of producing: groups whose raw scores are all equal carry no
learning signal and are replaced by groups from further rounds (``algorithm.dynamic_sampling``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf_dist.algorithms import overlong_penalty, select_groups, uniform_groups
from rlhf_dist.checkpoints.files import load_tree, save_tree
from rlhf_dist.config import RunConfig
from rlhf_dist.data import Prompt
from rlhf_dist.driver.remote_calls import Roles, RunFailed, gather, shard_sizes
from rlhf_dist.driver.rounds import Call, ScoredRound, generate_and_score, request_for
from rlhf_dist.driver.trajectories import check_failures, record_errors, sample_fields, trajectory_metrics, turn_tensors
from rlhf_dist.experience import Experience, StepBatch, columns_of
from rlhf_dist.metrics.timing import timed
from rlhf_dist.models.sequences import left_pad, right_pad
from rlhf_dist.rollout.attempts import RolloutFailures
from rlhf_dist.rollout.requests import Request, Sample, request_seed


@dataclass
class Produced:
    """A step's batch, scored and with reference log-probs, and what producing it measured."""

    step: int
    batch: StepBatch
    stats: dict[str, float]  # reward/*, rollout/filtered_groups, ...
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: generate, score, reference
    fillers: int = 0  # dynamic sampling out of rounds: the last `fillers` groups are uniform, advantage 0

    def zero_filler_advantages(self, group_size: int) -> None:
        """After the advantages phase: uniform filler groups carry no signal (CONTRACTS)."""
        if self.fillers:
            self.batch.exp.advantages[-self.fillers * group_size:] = 0.0


class RolloutPipeline:
    def __init__(self, cfg: RunConfig, roles: Roles, prompts: list[Prompt], pad_token_id: int, sampler,
                 version: Callable[[], int], after_generate: Callable[[], None] = lambda: None,
                 errors_path: Path | None = None):
        self.cfg, self.roles, self.prompts, self.pad, self.sampler = cfg, roles, prompts, pad_token_id, sampler
        self.version, self.after_generate = version, after_generate
        self.errors_path = errors_path  # multi-turn: RUN_DIR/rollout_errors.jsonl, one line per failed attempt
        self.ahead = cfg.rollout.async_steps
        self.ready: dict[int, Produced] = {}  # produced, not yet trained on
        self.in_flight: tuple[list[int], Future] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout") if self.ahead else None
        self._drawn: dict[tuple[int, int], list[int]] = {}  # (step, round) -> prompt indices, kept for redos

    # -- the driver's calls ---------------------------------------------------------------------

    def take(self, step: int, call: Call) -> Produced:
        """Step ``step``'s batch: produced earlier (async), or now, each phase through ``call``."""
        if step not in self.ready:
            self.ready[step] = self.produce(step, call)
        return self.ready.pop(step)

    def launch_ahead(self, step: int) -> None:
        """Async: start producing the batches of steps ``step+1 .. step+k`` that are not produced yet
        (those before the run's end), in the background, at the generators' current weights."""
        if not self.ahead:
            return
        todo = [s for s in range(step + 1, min(step + self.ahead, self.cfg.steps - 1) + 1) if s not in self.ready]
        if todo:
            future = self._executor.submit(lambda: [self.produce(s, lambda work: work()) for s in todo])
            self.in_flight = (todo, future)

    def finish(self) -> None:
        """Wait for the background production (before a weight sync or a checkpoint); its errors
        (an actor that died) surface here. The batches it made are kept."""
        if self.in_flight is None:
            return
        _, future = self.in_flight
        self.in_flight = None
        for produced in future.result():
            self.ready[produced.step] = produced

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # -- producing a batch ----------------------------------------------------------------------

    def produce(self, step: int, call: Call) -> Produced:
        """Generate and score the step's groups (more rounds if dynamic sampling drops some), shape
        the scores for overlong responses, then the reference log-probs."""
        rollout, algo = self.cfg.rollout, self.cfg.algorithm
        n, groups_wanted = rollout.samples_per_prompt, rollout.prompts_per_step
        timings: dict[str, float] = {}
        rounds: list[ScoredRound] = []
        kept = 0
        for round_ in range(1 + (algo.max_sampling_rounds if algo.dynamic_sampling else 0)):
            wanted = groups_wanted if round_ == 0 else groups_wanted - kept
            requests = self._requests(step, round_, self._draw(step, round_, wanted))
            scored = generate_and_score(
                self.roles, self.prompts, requests, rollout.sampling, step=step, call=call, timings=timings
            )
            rounds.append(scored)
            self._check_trajectories(step, scored)
            if not algo.dynamic_sampling:
                break
            kept += int((~uniform_groups(scored.rewards.total, n) & ~scored.failed.view(-1, n).any(1)).sum())
            if kept >= groups_wanted:
                break
        self.after_generate()
        batch, stats, fillers = self._assemble(rounds, groups_wanted)
        exp = batch.exp
        if algo.overlong == "penalty":  # multi-turn: the whole trajectory against its token budget
            lengths, longest = exp.response_mask.sum(-1), rollout.sampling.max_new_tokens
            if rollout.multi_turn is not None:
                lengths = lengths + exp.prompt_mask.sum(-1)
                longest = rollout.multi_turn.max_total_tokens or rollout.max_model_len
            exp.scores = exp.scores + overlong_penalty(lengths, longest, algo.overlong_buffer, algo.overlong_penalty)
        elif algo.overlong == "mask":
            exp.trainable = 1.0 - exp.truncated.float()
        with timed(timings, "reference"):
            exp.ref_logprobs = call(lambda: self._reference(exp))
        for key in [k for k in self._drawn if k[0] == step]:
            del self._drawn[key]
        return Produced(step, batch, stats, timings, fillers)

    def _draw(self, step: int, round_: int, count: int) -> list[int]:
        """The prompts of a round, drawn once: a redone phase reuses them."""
        if (step, round_) not in self._drawn:
            self._drawn[(step, round_)] = self.sampler.next_batch(count)
        return self._drawn[(step, round_)]

    def _requests(self, step: int, round_: int, indices: list[int]) -> list[Request]:
        """``samples_per_prompt`` requests per prompt; round r > 0 (dynamic sampling) has seeds of
        its own, round 0 the seeds of the plain loop."""
        stream = f"round{round_}" if round_ else ""
        return [
            request_for(i, s, self.prompts[i], request_seed(self.cfg.seed, step, i, s, stream))
            for i in indices
            for s in range(self.cfg.rollout.samples_per_prompt)
        ]

    def _check_trajectories(self, step: int, scored: ScoredRound) -> None:
        """Multi-turn: every failed attempt of the round to the errors file, then the error budget."""
        multi = self.cfg.rollout.multi_turn
        if multi is None:
            return
        record_errors(self.errors_path, scored.samples)
        try:
            check_failures(scored.samples, self.cfg.rollout.samples_per_prompt, multi.errors.max_error_frac,
                           step == 0, multi.env or "(tools only)", self.errors_path)
        except RolloutFailures as exc:
            raise RunFailed(str(exc)) from None

    def _reference(self, exp: Experience) -> torch.Tensor:
        workers = self.roles.reference_workers()
        sizes = shard_sizes(exp.batch_size, len(workers))
        refs = [a.reference_logprobs.remote(s) for a, s, k in zip(workers, exp.shards(sizes), sizes) if k]
        return torch.cat(gather(refs, "reference"))

    def _assemble(self, rounds: list[ScoredRound], groups_wanted: int) -> tuple[StepBatch, dict[str, float], int]:
        """The step's batch from the rounds' groups (informative ones first when dynamic sampling
        is on; without it, round 0 as it came) and its reward statistics."""
        n = self.cfg.rollout.samples_per_prompt
        picks, fillers, padding = [(0, g) for g in range(groups_wanted)], 0, 0
        failed = [r.failed.view(-1, n).any(1) for r in rounds]  # multi-turn: groups with a failed trajectory
        if self.cfg.algorithm.dynamic_sampling or any(f.any() for f in failed):
            uniform = [uniform_groups(r.rewards.total, n) for r in rounds]
            if not self.cfg.algorithm.dynamic_sampling:  # every group counts as informative
                uniform = [torch.zeros_like(u) for u in uniform]
            selection = select_groups(uniform, groups_wanted, failed)
            picks, fillers, padding = selection.slots, groups_wanted - selection.informative, selection.padding
        samples = [rounds[r].samples[g * n + i] for r, g in picks for i in range(n)]
        total = torch.cat([rounds[r].rewards.total[g * n:(g + 1) * n] for r, g in picks])
        names = rounds[0].rewards.components
        components = {k: torch.cat([rounds[r].rewards.components[k][g * n:(g + 1) * n] for r, g in picks]) for k in names}
        gold = None
        if rounds[0].rewards.gold is not None:
            gold = torch.cat([rounds[r].rewards.gold[g * n:(g + 1) * n] for r, g in picks])
        rows = [self.prompts[s.prompt_index] for s in samples]
        exp = self._to_experience(samples)
        exp.scores, exp.reward_components = total, components
        real = slice(0, len(samples) - padding * n)  # the copies that pad dropped groups' slots have no loss
        if padding:
            exp.trainable = torch.ones(len(samples))
            exp.trainable[real.stop:] = 0.0
        batch = StepBatch(exp=exp, prompts=[p.text for p in rows], responses=[s.text for s in samples],
                          columns=columns_of(rows), turns=[sample_fields(s) for s in samples] if samples[0].multi else [])
        stats = {"reward/mean": float(total[real].mean()), "reward/std": float(total[real].std())}
        stats.update({f"reward/{k}": float(v[real].mean()) for k, v in components.items()})
        if gold is not None:
            stats["reward/gold_mean"] = float(gold[real].mean())
        if samples[0].multi is not None:
            stats.update(trajectory_metrics([s for r in rounds for s in r.samples], padding))
        if self.cfg.algorithm.dynamic_sampling:
            stats["rollout/filtered_groups"] = float(selection.filtered)
            stats["rollout/sampling_rounds"] = float(len(rounds))
            stats["rollout/filler_groups"] = float(fillers)
        stats["rollout/truncated_frac"] = int(exp.truncated.sum()) / max(1, len(samples))
        return batch, stats, fillers

    def _to_experience(self, samples: list[Sample]) -> Experience:
        prompts = [s.multi.prompt_ids if s.multi is not None else self.prompts[s.prompt_index].ids for s in samples]
        prompt_ids, prompt_mask = left_pad(prompts, self.pad, torch.float32)
        length = max(1, max(len(s.response_ids) for s in samples))  # an all-empty batch still has one column
        response_ids, response_mask = right_pad([s.response_ids for s in samples], self.pad, torch.float32, width=length)
        rollout_logprobs, _ = right_pad([s.logprobs for s in samples], 0.0, width=length)
        model_mask, turn_rewards = turn_tensors(samples, length) if samples[0].multi is not None else (None, None)
        return Experience(
            model_mask=model_mask,
            turn_rewards=turn_rewards,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            rollout_logprobs=rollout_logprobs,
            prompt_index=torch.tensor([s.prompt_index for s in samples]),
            policy_versions=torch.full((len(samples),), self.version(), dtype=torch.long),
            truncated=torch.tensor([s.truncated for s in samples]),
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def save_ready(self, root: Path) -> list:
        """Write the produced batches not yet trained on (async) as ``root/pending/step-N.safetensors``;
        returns the files' digests for the manifest. Prompts and row columns are rebuilt from the
        prompt index on load."""
        digests = []
        for step, produced in sorted(self.ready.items()):
            exp, batch = produced.batch.exp, produced.batch
            tree = {
                "step": step,
                "tensors": {name: getattr(exp, name) for name in exp._tensor_fields() if getattr(exp, name) is not None},
                "components": dict(exp.reward_components),
                "responses": batch.responses, "turns": batch.turns,
                "stats": produced.stats, "timings": produced.timings, "fillers": produced.fillers,
            }
            (root / "pending").mkdir(exist_ok=True)
            digests.append(save_tree(tree, root / "pending" / f"step-{step}.safetensors"))
        return digests

    def load_ready(self, root: Path) -> None:
        self.ready.clear()
        for path in sorted((root / "pending").glob("step-*.safetensors")):
            tree = load_tree(path)
            tensors = tree["tensors"]
            if "truncated" in tree:  # written before `truncated` was a field of Experience
                tensors["truncated"] = torch.tensor(tree["truncated"], dtype=torch.bool)
            exp = Experience(**tensors, reward_components=tree["components"])
            rows = [self.prompts[int(i)] for i in exp.prompt_index]
            batch = StepBatch(exp=exp, prompts=[p.text for p in rows], responses=tree["responses"], columns=columns_of(rows),
                              turns=tree.get("turns", []))
            self.ready[tree["step"]] = Produced(tree["step"], batch, tree["stats"], tree["timings"], tree["fillers"])
