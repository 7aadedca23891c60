"""The reward-hacking alarm in real runs: it fires when the proxy is exploitable, not otherwise."""

from pathlib import Path

from launch.run import train
from rlhf_dist.config import load_config


def test_alarm_fires_when_the_proxy_pays_for_a_planted_feature(tmp_path, monkeypatch, capfd):
    # The reward actor imports the planted function by module path.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    cfg = load_config(
        None,
        [
            "steps=12", "logging.tensorboard=false", "checkpoint.save_final=false",
            "reward.components=[{type: python, path: 'planted_reward:z_share', name: planted}]",
            "reward.gold=letters",
        ],
    )
    records = train(cfg, tmp_path / "run", progress=False).records
    # The console speaks the alarm in our voice (the library's logs go to RUN_DIR/logs).
    assert "rlhf-dist: warning: reward-hacking alarm at step" in capfd.readouterr().err
    proxy = [r["reward/mean"] for r in records]
    gold = [r["reward/gold_mean"] for r in records]
    assert proxy[-1] > 2 * proxy[0] and gold[-1] < gold[0], "the constructed case did not hack"
    assert records[-1]["monitor/hacking_alarm"] == 1.0
    assert sum(r["monitor/hacking_alarm"] for r in records[:4]) == 0, "no alarm before the window fills"
