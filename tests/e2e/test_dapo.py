"""DAPO's dynamic sampling and overlong shaping in a real run (real vLLM, reward actor, learners)."""

from pathlib import Path

from launch.run import train
from rlhf_dist.config import load_config


def test_dynamic_sampling_replaces_uniform_groups_and_overlong_responses_are_penalised(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the reward actor imports sparse_reward
    steps, rounds = 5, 3
    cfg = load_config(None, [
        f"steps={steps}", "logging.tensorboard=false", "checkpoint.save_final=false",
        "reward.components=[{type: python, path: 'sparse_reward:a_rich', name: sparse}]",
        "algorithm.dynamic_sampling=true", f"algorithm.max_sampling_rounds={rounds}",
        "algorithm.overlong=penalty", "algorithm.overlong_buffer=4", "algorithm.overlong_penalty=0.5",
    ])
    records = train(cfg, tmp_path / "run", progress=False).records
    assert [r["step"] for r in records] == list(range(steps))
    # Most groups of a random policy score all 0 under the sparse reward: they are dropped and
    # further rounds are sampled; the batch keeps its shape either way.
    assert sum(r["rollout/filtered_groups"] for r in records) > 0
    assert any(r["rollout/sampling_rounds"] > 1 for r in records)
    assert all(1 <= r["rollout/sampling_rounds"] <= 1 + rounds for r in records)
    for r in records:  # fillers only once the rounds ran out
        assert r["rollout/filler_groups"] == 0 or r["rollout/sampling_rounds"] == 1 + rounds
    # A random-init model rarely emits EOS within 16 tokens: responses run into the limit and the
    # penalty (scores are logged raw, before it) shapes them.
    assert all(0.0 < r["rollout/truncated_frac"] <= 1.0 for r in records)
    assert all(r["sync/verified"] == 1.0 for r in records)
