"""User errors caught before Ray starts (issue 8: items 2 and 4): the CLI run in a subprocess, as a
user runs it, from a folder of the user's files. Each refused run exits 2 with the config key and
the fix in its message, prints no traceback, and leaves every file as it was (checksums before and
after; no run directory appears). The preflight reports every problem it finds at once, so one run
covers several bad inputs of a class.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def rlhf(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "launch", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
    )


def checksums(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in root.rglob("*") if f.is_file()}


def refused(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """stderr of a run that must be refused before it starts, having touched nothing."""
    before = checksums(folder)
    out = rlhf(folder, *args, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert checksums(folder) == before
    assert not (folder / "run").exists() and not (folder / "runs").exists()
    return out.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    """A user's folder: reward modules, model directories with a part missing, bad data files."""
    (tmp_path / "myrewards.py").write_text("def score(prompts, responses, **columns):\n    return [0.0] * len(responses)\n\nx = 3\n")
    (tmp_path / "broken.py").write_text("def score(prompts, responses:\n")
    (tmp_path / "models").mkdir()
    for name, files in {"no-weights": ("config.json", "tokenizer.json"), "no-tokenizer": ("config.json", "model.safetensors")}.items():
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("{}")
    (tmp_path / "prompts.jsonl").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256)))
    (tmp_path / "eval.parquet").write_bytes(b"PAR1 not really parquet")
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "notes.txt").write_text("a plain directory, not a saved dataset\n")
    (tmp_path / "config.yaml").write_bytes(bytes(range(256)))
    return tmp_path


def test_python_rewards_that_do_not_import(user_files):
    err = refused(
        user_files, "train", "--run-dir", "run",
        "reward.components=[{type: python, path: 'no_such_module_x:score'}, {type: python, path: 'myrewards:scor'},"
        " {type: python, path: 'myrewards:x'}, {type: python, path: 'myrewards:score'}]",
        "reward.gold=broken:score",
    )
    assert "reward.components.0.path: cannot import module 'no_such_module_x'" in err and "PYTHONPATH" in err
    assert "reward.components.1.path: module 'myrewards'" in err and "has no attribute 'scor'; did you mean 'score'?" in err
    assert "reward.components.2.path: 'myrewards:x' is a int, not a function" in err
    assert "reward.gold: cannot import 'broken:score':" in err and "broken.py line 1" in err
    assert "components.3" not in err  # the one that imports, from the current directory, passes


def test_unknown_rule_names(user_files):
    err = refused(user_files, "train", "--run-dir", "run", "reward.components.0.name=leters", "reward.gold=nosuchrule")
    assert "reward.components.0: unknown reward rule 'leters'; did you mean 'letters'?" in err
    assert "reward.gold: unknown reward rule 'nosuchrule'" in err


def test_model_directories_missing_weights_tokenizer_or_existence(user_files):
    err = refused(
        user_files, "train", "--run-dir", "run", "model.path=no-weights", "reference.path=models/nothere",
        "reward.components=[{type: rule, name: letters}, {type: model, path: no-tokenizer}]",
    )
    assert "model.path 'no-weights' holds no weights (no *.safetensors or *.bin file" in err
    # `models/` is a folder here, so models/nothere is a local path, not a hub id to retry for a minute.
    assert f"reference.path 'models/nothere' does not exist (relative paths start at {user_files})" in err
    assert "reward.components.1.path 'no-tokenizer' has no tokenizer" in err and "save_pretrained" in err


def test_a_hub_name_that_cannot_be_reached(user_files, tmp_path_factory):
    hub = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path_factory.mktemp("hf"))}
    hub.update(HF_HUB_OFFLINE="0")
    err = refused(user_files, "train", "--run-dir", "run", "model.path=no-such-org-x/no-such-model", env=hub)
    assert "model.path: no local directory 'no-such-org-x/no-such-model', and the hub could not be reached" in err
    assert "hf download" in err


def test_hub_questions_end_within_the_timeout(monkeypatch):
    """A hub that accepts the connection and never answers costs the timeout, not a minute of retries."""
    from huggingface_hub import constants

    from rlhf_dist.planning.machine_checks import ModelRef, model_problems

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    problems = model_problems([ModelRef("model.path", "silent-org/model"), ModelRef("reference.path", "silent-org/ref")], 1.0)
    assert time.monotonic() - start < 5
    assert len(problems) == 2 and all("the hub could not be reached (no answer within 1 s)" in p for p in problems)
    silent.close()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without GPUs")
def test_gpus_on_a_machine_without_them_and_more_cpus_than_cores(user_files):
    cores = os.cpu_count() or 1
    err = refused(user_files, "train", "--run-dir", "run", "placement.learner.num_gpus=1", f"placement.learner.num_cpus={cores}")
    assert "placement.learner.num_gpus=1 asks for GPUs, but this machine has none that torch can see" in err
    assert "set them to 0 for a CPU run" in err
    assert f"rlhf-dist: warning: this run asks for {2 * cores + 0.75:g} CPUs" in err and f"this machine has {cores} cores" in err


def test_resource_checks_are_local_and_plan_warns(monkeypatch, capsys):
    """A run joining a cluster (RAY_ADDRESS) leaves GPUs to the planner; `plan` for this machine warns."""
    from launch.cli.main import main
    from launch.preflight import preflight_train
    from rlhf_dist.config import load_config

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    preflight_train(load_config(None, ["placement.learner.num_gpus=1", "learner.num_workers=64",
                                       "learner.mini_batch_size=64", "learner.micro_batch_size=1"]))
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("RAY_ADDRESS")
    workers = 4 * (os.cpu_count() or 1)
    assert main(["plan", f"learner.num_workers={workers}", f"learner.mini_batch_size={workers}",
                 "learner.micro_batch_size=1", f"rollout.prompts_per_step={workers}"]) == 0
    err = capsys.readouterr().err
    assert f"and {workers} learner ranks, and this machine has {os.cpu_count()} cores" in err and "Traceback" not in err


def test_prompt_and_data_files_that_cannot_be_read(user_files):
    err = refused(user_files, "train", "--run-dir", "run", "data.prompts=prompts.jsonl", "eval.prompts=eval.parquet", "eval.every=1")
    assert "prompts.jsonl line 1: not UTF-8 text (byte 0x80" in err and "save the file as UTF-8" in err
    assert "eval.parquet is not a readable Parquet file" in err
    err = refused(user_files, "sft", "--run-dir", "run", "data.path=rows", "model.path=~/no-such-model")
    assert "rows is a directory but not a saved dataset" in err
    assert "model.path '~/no-such-model': '~' is not expanded in a config; write the full path" in err


def test_config_files_that_are_not_yaml_text(user_files):
    err = refused(user_files, "train", "config.yaml", "--run-dir", "run")
    assert "config.yaml is a binary file, not YAML text" in err
    (user_files / "config.yaml").write_text("steps: 3\nsteps: 4\n")
    err = refused(user_files, "dpo", "config.yaml", "--run-dir", "run")
    assert "key 'steps' is given twice, at lines 1 and 2" in err


def test_submit_checks_what_it_can_before_the_cluster(user_files):
    """Relative paths are read from the uploaded project (the user's folder, where submit runs): one
    missing there fails here, before the (unreachable) cluster is asked anything."""
    address = f"http://127.0.0.1:{closed_port()}"
    err = refused(user_files, "submit", "train", "data.prompts=my-prompts.jsonl", "--address", address)
    assert f"data.prompts='my-prompts.jsonl': a relative path is read from the job's copy of {user_files}" in err
    err = refused(user_files, "submit", "sft", "data.path=my-demos.jsonl", "--address", address)
    assert f"data.path='my-demos.jsonl': a relative path is read from the job's copy of {user_files}" in err
    assert "cannot reach" not in err


def test_ray_start_is_retried_once_then_one_line(monkeypatch):
    import ray

    import launch.roles
    from rlhf_dist.errors import UserError

    calls = []

    def flaky(**options):
        calls.append(options)
        if len(calls) in (1, 3, 4):
            raise TimeoutError("The current node timed out during startup.\n(raylet logs at ...)")

    monkeypatch.setattr(ray, "init", flaky)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert launch.roles.start_ray_cpus(1.0) is True and len(calls) == 2  # a second try succeeded
    with pytest.raises(UserError) as info:
        launch.roles.start_ray_cpus(1.0)
    assert len(calls) == 4
    assert str(info.value) == (
        "Ray did not start (tried twice: The current node timed out during startup.); the machine may be "
        "overloaded: free some CPU or memory and run again"
    )


def test_an_unforeseen_error_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    import launch.cli.config
    import launch.cli.main

    def broken(args):
        raise RuntimeError("something we did not foresee\nsecond line")

    monkeypatch.setattr(launch.cli.config, "_config_show", broken)  # the handler `config show` is built with
    assert launch.cli.main.main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert err == "rlhf-dist: failed: RuntimeError: something we did not foresee; rerun with --debug for the traceback\n"
    with pytest.raises(RuntimeError):
        launch.cli.main.main(["config", "show", "--debug"])


def test_a_reward_module_on_pythonpath_set_after_start_is_found_like_the_actors_will(tmp_path, monkeypatch):
    from rlhf_dist.planning.machine_checks import python_function_problem

    (tmp_path / "late_reward_mod.py").write_text("def score(prompts, responses):\n    return [0.0] * len(prompts)\n")
    monkeypatch.chdir(tmp_path.parent)
    assert "cannot import module 'late_reward_mod'" in python_function_problem("late_reward_mod:score", "r.path")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert python_function_problem("late_reward_mod:score", "r.path") is None
    assert str(tmp_path) not in sys.path, "the check leaves sys.path as it was"


def test_a_reward_whose_parameters_cannot_be_bound_is_refused_before_ray(tmp_path):
    """TRL's documented form with a column the data lacks, and a one-argument function: one line each,
    naming the parameter and the columns there are, before anything starts."""
    (tmp_path / "trl_rewards.py").write_text(
        "def accuracy(completions, answer, **kwargs):\n    return [0.0] * len(completions)\n"
        "def odd(text):\n    return [0.0] * len(text)\n"
    )
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "q{i}", "solution": "{i}"}}\n' for i in range(8)))
    err = refused(
        tmp_path, "train", "--run-dir", "run", "data.prompts=prompts.jsonl",
        "reward.components=[{type: python, path: 'trl_rewards:accuracy'}, {type: python, path: 'trl_rewards:odd'}]",
    )
    assert ("reward.components.0.path: trl_rewards:accuracy takes 'answer', which is neither a reward argument "
            "(prompts, completions, responses, completion_ids, trainer_state) nor a column of data.prompts "
            "(columns: solution)") in err
    assert "reward.components.1.path: trl_rewards:odd must take (prompts, responses, **columns)" in err
    assert len(err.strip().splitlines()) == 2


def test_the_wrong_kind_of_model_is_refused_before_ray(tiny_model, tmp_path):
    """A causal LM where a reward model belongs (a component, the gold, the critic's start), and a
    reward model where the policy belongs: each named with the architecture found and the one wanted."""
    policy, reward = tiny_model.policy, tiny_model.reward
    err = refused(
        tmp_path, "train", "--run-dir", "run", f"model.path={reward}", "algorithm.name=ppo",
        "learner.critic_init=reward_model", f"reward.components=[{{type: model, path: '{policy}'}}]",
        f"reward.gold={{type: model, path: '{policy}'}}",
    )
    assert f"model.path '{reward}' holds a LlamaForSequenceClassification, a sequence classifier" in err
    assert f"reward.components.0.path '{policy}' holds a LlamaForCausalLM, a causal LM; a reward model must be" in err
    assert f"reward.gold.path '{policy}' holds a LlamaForCausalLM" in err
    err = refused(tmp_path, "dpo", "--run-dir", "run", f"model.path={reward}", "data.path=nothere.jsonl")
    assert f"model.path '{reward}' holds a LlamaForSequenceClassification" in err and "needs a causal LM" in err


def test_data_that_cannot_teach_is_refused_before_ray_with_the_numbers(tiny_model, tmp_path):
    """Swapped preference columns (chosen == rejected), and too few rows for one optimizer step."""
    pairs = [{"prompt": f"q{i}", "chosen": "aaa", "rejected": "aaa" if i % 4 else "bbb"} for i in range(40)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (tmp_path / "demos.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "response": "aaa"}) + "\n" for i in range(12)))
    before = checksums(tmp_path)
    out = rlhf(tmp_path, "dpo", "--run-dir", "dpo", f"model.path={tiny_model.policy}", "data.path=pairs.jsonl")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr, out.stderr
    assert "30 of 40 preference pairs in pairs.jsonl cannot teach a preference (30 with chosen == rejected)" in out.stderr
    out = rlhf(tmp_path, "sft", "--run-dir", "sft", f"model.path={tiny_model.policy}", "data.path=demos.jsonl")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr, out.stderr
    assert "sft: 11 training examples after holding out 1 for eval" in out.stderr and "no optimizer step" in out.stderr
    after = checksums(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(("dpo/", "sft/"))} == before
    assert not (tmp_path / "sft" / "config.yaml").exists(), "a refused stage writes no config"


def test_an_unreachable_remote_reward_is_refused_before_ray(tmp_path):
    port = closed_port()
    err = refused(tmp_path, "train", "--run-dir", "run", f"reward.components=[{{type: remote, url: 'http://127.0.0.1:{port}/score'}}]")
    assert (f"reward.components.0.url='http://127.0.0.1:{port}/score' cannot be reached (Connection refused from "
            f"127.0.0.1:{port} within 3 s); start the reward server, or fix the URL") in err


def test_a_tokenizer_larger_than_the_models_embedding_is_refused_with_both_sizes(tiny_model, tmp_path):
    import shutil

    small = tmp_path / "small-vocab"
    shutil.copytree(tiny_model.policy, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    err = refused(tmp_path, "train", "--run-dir", "run", "model.path=small-vocab")
    assert ("model.path's tokenizer 'small-vocab' has 512 tokens, but model.path 'small-vocab' embeds only 100 "
            "(config.json vocab_size)") in err
