"""The console in our voice (launch/console.py, actors/shell.py): library logs into RUN_DIR/logs/,
warnings that matter passed up once, known noise kept in the logs, the outputs line, the signal
handlers and the line a stopped run prints."""

import json
import logging
import os
import signal
import subprocess
import sys
import warnings

import pytest

from actors.log_relay import LOG_FILE_ENV, RELAY_FILE_ENV, WarningRelay
from launch import console


@pytest.fixture(autouse=True)
def fresh_console():
    console.end()
    yield
    console.end()


def test_outputs_line_names_what_the_run_dir_holds(tmp_path):
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", ".rlhf-dist-run"):
        (tmp_path / name).write_text("x")
    for name in ("checkpoints", "logs", "tiny-model"):
        (tmp_path / name).mkdir()
    line = console.outputs_line(tmp_path, {"final/": "the trained policy"})
    assert line == (f"outputs: {tmp_path}/ (config.yaml, eval.jsonl, metrics.jsonl, checkpoints/, "
                    "logs/ = Ray, vLLM, DeepSpeed and transformers logs, tiny-model/)")


def test_relay_passes_each_warning_once_and_marks_known_noise():
    seen = []
    relay = WarningRelay(seen.append, include_ours=False)
    relay.install()
    try:
        lib = logging.getLogger("somelib.engine")
        lib.warning("disk %s almost full", "/data")
        lib.warning("disk %s almost full", "/data")
        lib.info("not a warning")
        logging.getLogger("vllm.reload").warning("RotaryEmbedding: Failed to load weights")
        logging.getLogger("rlhf_dist.driver.loop").warning("ours: shown by our own handler")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = relay._showwarning  # catch_warnings saved and restores it
            relay.write_warning = lambda text: None
            warnings.warn_explicit("old API", FutureWarning, "/x/site-packages/somelib/api.py", 3)
    finally:
        relay.uninstall()
    assert [(s["source"], s["message"], s["noise"]) for s in seen] == [
        ("somelib", "disk /data almost full", False),
        ("vllm", "RotaryEmbedding: Failed to load weights", True),
        ("somelib", "FutureWarning: old API", False),
    ]
    assert logging.getLogRecordFactory() is not relay._factory


LOAD_REPORT = """\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: /runs/x/sft/model
Key            | Status     |
---------------+------------+-
lm_head.weight | UNEXPECTED |
{missing}   | MISSING    |
"""


def test_a_reward_head_swap_is_noise_and_any_other_load_report_is_shown_in_one_plain_line():
    from actors.log_relay import is_noise, summarize

    assert is_noise(LOAD_REPORT.format(missing="score.weight"))  # an RM from a causal LM: as intended
    other = LOAD_REPORT.format(missing="model.norm.weight")
    assert not is_noise(other)
    assert summarize(other) == ("LlamaForSequenceClassification LOAD REPORT from: /runs/x/sft/model; "
                                "missing model.norm.weight; unexpected lm_head.weight")


def test_a_warning_sent_by_every_rank_is_shown_once(capsys):
    for process in ("rm-learner-0", "rm-learner-1"):
        console._Router.show({"source": "transformers", "message": "slow tokenizer", "ours": False,
                              "noise": False, "process": process})
    assert capsys.readouterr().err == "rlhf-dist: warning: transformers in rm-learner-0: slow tokenizer\n"


def test_library_logs_go_to_the_run_dir_and_warnings_reach_the_terminal_once(tmp_path, capsys):
    lib = logging.getLogger("fakelib")
    own = logging.StreamHandler(sys.stderr)
    lib.addHandler(own)
    lib.propagate = False
    lib.setLevel(logging.INFO)
    with console.logs_to(tmp_path) as logs:
        lib.info("loading weights 100%")
        lib.warning("the tokenizer has no pad token")
        lib.warning("the tokenizer has no pad token")
        logging.getLogger("fakelib.sub").warning("RotaryEmbedding: Failed to load weights")
        logging.getLogger("rlhf_dist.test").warning("step 3: the loss was NaN")
        assert console.routing() and console.actor_runtime_env("rollout-0")["env_vars"][LOG_FILE_ENV] == str(
            logs / "rollout-0.log")
    assert lib.handlers == [own] and lib.propagate is False  # put back as it was
    assert console.actor_runtime_env("rollout-0") is None and not console.routing()
    err = capsys.readouterr().err.splitlines()
    assert err == ["rlhf-dist: warning: fakelib: the tokenizer has no pad token",
                   "rlhf-dist: warning: step 3: the loss was NaN"]
    log = (tmp_path / "logs" / "driver.log").read_text()
    assert "INFO fakelib: loading weights 100%" in log and "RotaryEmbedding" in log


def test_an_actor_writes_all_its_output_to_its_log_and_passes_up_what_matters(tmp_path):
    log, relay = tmp_path / "logs" / "rollout-0.log", tmp_path / "logs" / "warnings.jsonl"
    script = (
        "import logging, os, sys\n"
        "from actors.log_relay import route_output_to_log\n"
        "route_output_to_log()\n"
        "print('python print'); os.write(2, b'C-level write\\n')\n"
        "logging.getLogger('vllm').warning('KV cache is too small')\n"
        "logging.getLogger('vllm').warning('RotaryEmbedding: Failed to load weights')\n"
        "logging.getLogger('rlhf_dist.rollout.hf_engine').warning('our warning')\n"
    )
    env = {**os.environ, LOG_FILE_ENV: str(log), RELAY_FILE_ENV: str(relay)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    text = log.read_text()
    assert all(s in text for s in ("python print", "C-level write", "KV cache is too small", "RotaryEmbedding"))
    passed = [json.loads(line) for line in relay.read_text().splitlines()]
    assert [(p["message"], p["ours"], p["process"]) for p in passed] == [
        ("KV cache is too small", False, "rollout-0"), ("our warning", True, "rollout-0")]


def test_verbose_leaves_every_library_on_the_terminal(tmp_path, monkeypatch):
    import ray

    from launch import roles

    console.begin(verbose=True)
    with console.logs_to(tmp_path) as logs:
        assert logs is None and console.actor_runtime_env("learner-0") is None
        calls = []
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
        assert roles.start_ray_cpus(1)
    assert calls[0]["log_to_driver"] is True
    assert not (tmp_path / "logs").exists()


def test_ray_does_not_forward_actor_output_while_routing(tmp_path, monkeypatch):
    import ray

    from launch import roles

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    with console.logs_to(tmp_path):
        roles.start_ray_cpus(1)
    assert calls[0]["log_to_driver"] is False


def test_sigterm_inside_the_loop_asks_it_to_stop_and_a_second_one_interrupts():
    console.begin(verbose=True)
    asked = []
    with console.on_sigterm(lambda: asked.append(True)):
        os.kill(os.getpid(), signal.SIGTERM)
        assert asked == [True]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert console.exit_code() == 143


def test_sigint_interrupts_at_once_with_exit_130():
    console.begin(verbose=True)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert console.exit_code() == 130


def test_the_stop_line_names_the_step_the_checkpoint_and_the_command(tmp_path):
    from launch.run import stopped_line
    from rlhf_dist.config import load_config

    cfg = load_config(None, ["steps=20"])
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    assert "before the first step; no checkpoint was written yet" in stopped_line(cfg, run_dir)
    rows = [json.dumps({"step": s, "reward/mean": 0.1}) for s in range(7)]
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (run_dir / "checkpoints" / "step-000005").mkdir(parents=True)
    line = stopped_line(cfg, run_dir)
    assert line.startswith("rlhf-dist: interrupted (Ctrl-C) after step 7/20; ")
    assert f"last complete checkpoint: {run_dir}/checkpoints/step-000005" in line
    assert line.endswith(f"continue with: rlhf-dist train --resume '{run_dir}'")


def test_verbose_is_accepted_anywhere_on_the_line():
    out = subprocess.run([sys.executable, "-m", "launch", "config", "show", "--verbose", "steps=2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "steps: 2" in out.stdout
