"""Multi-turn runs as a user starts them (in-process `train` on one shared local Ray, the hf engine unless said):
the mask canary (env text never trained on, and a leaked mask caught), chaos that stays inside its
trajectories, and an env that always fails stopping the first step with its paragraph."""

import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest
import torch

from launch.run import train
from rlhf_dist.config import load_config
from rlhf_dist.driver import batch_producer
from rlhf_dist.driver.remote_calls import RunFailed
from rlhf_dist.models.loading import load_causal_lm, load_tokenizer
from tests.e2e.multi_turn_envs import PHRASE

ENVS = "tests.e2e.multi_turn_envs"
EXAMPLES = Path(__file__).parents[2] / "examples"
BASE = ["rollout.engine=hf", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "learner.mini_batch_size=16",
        "rollout.sampling.max_new_tokens=8", "logging.tensorboard=false", "checkpoint.every=0", "reward.components=[]",
        "reward.gold=null", "rollout.multi_turn.max_turns=2", "eval.every=0"]


def phrase_logprob(policy_dir: str) -> float:
    """log p(PHRASE) as the env's message after a first reply, under the policy in ``policy_dir``."""
    tok = load_tokenizer(policy_dir, False)
    model = load_causal_lm(policy_dir, "float32", False).eval()
    chat = [{"role": "user", "content": "write letters: a banana"}, {"role": "assistant", "content": "banana"}]
    context = tok(tok.apply_chat_template(chat, tokenize=False) + "<|user|>\n", add_special_tokens=False)["input_ids"]
    phrase = tok(PHRASE, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + phrase])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(logps.gather(-1, ids[0, 1:, None])[-len(phrase):].sum())


def canary_run(path, steps=10):
    cfg = load_config(None, [*BASE, f"steps={steps}", f"rollout.multi_turn.env={ENVS}:CanaryEnv"])
    result = train(cfg, path, progress=False)
    return result, phrase_logprob(str(path / "tiny-model" / "policy")), phrase_logprob(str(path / "final"))


@pytest.fixture(scope="module")
def canary(tmp_path_factory, local_ray):
    return canary_run(tmp_path_factory.mktemp("canary") / "run")


def test_env_text_is_never_trained_on(canary):
    result, before, after = canary
    rewards = [r["reward/mean"] for r in result.records]
    assert sum(rewards[-3:]) > sum(rewards[:3]), "the run must learn (its first turn's share of a)"
    assert after - before < 0.5, f"log p(env phrase) rose from {before:.2f} to {after:.2f}: env tokens were trained on"
    record = result.records[-1]
    assert record["rollout/turns_mean"] == 2.0 and record["rollout/stop/done"] == 32.0
    assert 0 < record["rollout/obs_token_frac"] < 1 and record["rollout/logprob_abs_diff"] < 1e-5


def test_a_leaked_mask_is_caught_by_the_canary(canary, tmp_path, monkeypatch):
    """The same run with the model mask replaced by every response token (the bug the canary is
    for): the env's phrase, which follows good replies, is learned."""
    real = batch_producer.turn_tensors

    def leaked(samples, width):
        mask, rewards = real(samples, width)
        lengths = torch.tensor([len(s.response_ids) for s in samples])
        return (torch.arange(width)[None, :] < lengths[:, None]).float(), rewards

    monkeypatch.setattr(batch_producer, "turn_tensors", leaked)
    _, before, after = canary_run(tmp_path / "leaked")
    _, masked_before, masked_after = canary
    assert after - before > 2.0 and after - before > 4 * (masked_after - masked_before), (before, after)


def test_chaos_stays_inside_its_trajectories(tmp_path, local_ray):
    """An env that raises in 10% of its steps and kills its own process in 2% (process isolation):
    twenty steps finish, every failed attempt is recorded, no failed trajectory is trained on, and
    the task still learns."""
    cfg = load_config(None, [*BASE, "steps=20", "rollout.multi_turn.max_turns=1", "rollout.multi_turn.isolation=process",
                             f"rollout.multi_turn.env={ENVS}:ChaosEnv", "rollout.multi_turn.env_args={exit_frac: 0.02}",
                             "rollout.multi_turn.errors.retries=1", "rollout.multi_turn.errors.max_error_frac=0.5"])
    result = train(cfg, tmp_path / "run", progress=False)
    records = result.records
    assert len(records) == 20
    errors = [json.loads(line) for line in (tmp_path / "run" / "rollout_errors.jsonl").read_text().splitlines()]
    assert sum(r["rollout/env_errors"] for r in records) == len(errors) > 0
    kinds = {e["error"]["type"] for e in errors}
    assert kinds == {"RuntimeError", "ChildDied"}, kinds
    assert all(e["phase"] == "step" and e["traceback"] and e["seconds"] >= 0 for e in errors)
    assert sum(r["rollout/dropped_groups"] for r in records) >= 0
    rewards = [r["reward/mean"] for r in records]
    assert sum(rewards[-5:]) / 5 > 1.5 * sum(rewards[:5]) / 5, rewards


def test_an_env_that_always_fails_stops_the_first_step_with_one_paragraph(tmp_path, local_ray):
    cfg = load_config(None, [*BASE, "steps=3", f"rollout.multi_turn.env={ENVS}:BrokenEnv"])
    with pytest.raises(RunFailed) as raised:
        train(cfg, tmp_path / "run", progress=False)
    message = str(raised.value)
    assert "32 of 32 trajectories failed at step 0" in message and "and it is the first step" in message
    assert f"{ENVS}:BrokenEnv raised ValueError: this env cannot start: no board file in reset" in message
    errors = (tmp_path / "run" / "rollout_errors.jsonl").read_text().splitlines()
    assert len(errors) == 64  # 32 trajectories, each tried twice (errors.retries=1)


def test_a_template_that_cannot_extend_a_conversation_is_refused_before_ray(tmp_path):
    """A chat template that writes the message count first renders every conversation anew: no suffix
    can be taken, so the run is refused in one line, exit 2, before Ray starts."""
    config = tmp_path / "bad_template.yaml"
    config.write_text(
        "data:\n  chat_template: |-\n"
        "    {{ messages | length }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}\n"
        f"rollout:\n  multi_turn:\n    env: {ENVS}:CanaryEnv\nreward:\n  components: []\n  gold: null\n")
    out = subprocess.run([sys.executable, "-m", "launch", "train", str(config), "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("rlhf-dist: error")]
    assert len(errors) == 1 and "chat template" in errors[0] and "multi-turn" in errors[0], out.stderr
    assert "starting Ray" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_multi_turn_trains_with_what_single_turn_runs_ship_with(tmp_path, local_ray):
    """Multi-turn with everything a single-turn run may switch on, at once: vLLM serving a LoRA adapter
    that arrives alone at every sync, two ZeRO-3 ranks with token-budget micro-batches, one step of
    rollouts generated ahead (with the IS correction), dynamic sampling, the overlong penalty, and eval
    on held-out prompts (multi-turn rollouts too). The first step's batch was sampled by the very
    weights the learner holds, so its rollout and learner log-probs agree at every model token."""
    from rlhf_dist.models.lora import with_lora

    cfg = load_config(None, [
        *BASE, "steps=3", "rollout.engine=vllm", "rollout.multi_turn.env=examples.envs.word_echo:WordEchoEnv",
        "learner.lora.enabled=true", "learner.num_workers=2", "learner.zero_stage=3", "learner.micro_batch_size=4",
        "learner.max_tokens_per_micro_batch=160", "rollout.async_steps=1", "algorithm.is_correction=tis",
        "algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=1", "algorithm.overlong=penalty",
        "algorithm.overlong_buffer=4", "eval.every=2", "eval.holdout=8", "eval.max_prompts=8"])
    run_dir = tmp_path / "run"
    logged = train(cfg, run_dir, progress=False).records
    records = [r for r in logged if "policy/loss" in r]  # the last record is the final eval alone
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(r["rollout/turns_mean"] == 2 and r["rollout/error_frac"] == 0 for r in records)
    assert records[0]["rollout/logprob_abs_diff"] < 1e-4  # tokens held exactly, masks aligned, over two turns
    assert all(torch.isfinite(torch.tensor(r["policy/loss"])) for r in records)
    assert records[0]["rollout/staleness_max"] == 0 and max(r["rollout/staleness_max"] for r in records[1:]) == 1
    assert all(0 < r["is/weight_mean"] <= 2.0 for r in records)  # the correction weighed the stale batches
    assert all(1 <= r["rollout/sampling_rounds"] <= 2 for r in records)
    evals = [r for r in logged if "eval/reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 2, 3] and all(r["eval/error_frac"] == 0 for r in evals)  # eval played trajectories as well

    adapter = with_lora(load_causal_lm(run_dir / "tiny-model" / "policy"), cfg.learner.lora, "CAUSAL_LM")
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapter.parameters() if p.requires_grad)
    assert all(r["sync/verified"] == 1.0 and r["sync/bytes"] == adapter_bytes for r in records)


def test_the_env_example_learns_to_read_what_the_env_said(tmp_path, local_ray):
    """examples/multiturn_env.yaml as it ships: the word the env names is drawn per trajectory, so
    replies that ignore it earn 0.25 at best; the run must end well past that."""
    cfg = load_config(str(EXAMPLES / "multiturn_env.yaml"), ["logging.tensorboard=false"])
    rewards = [r["reward/mean"] for r in train(cfg, tmp_path / "run", progress=False).records]
    first, last = mean(rewards[:5]), mean(rewards[-5:])
    assert first < 0.1 and last > 0.4, f"reward {first:.3f} (first 5 steps) -> {last:.3f} (last 5); chance is 0.25"
