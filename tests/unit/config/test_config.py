"""Config: the default, overrides, round trips and every kind of bad input."""

from pathlib import Path

import pytest
import yaml

from rlhf_dist.config import ConfigError, default_config_path, dump_config, load_config

REPO = Path(__file__).resolve().parents[3]


def problems(*overrides, path=None):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return "\n".join(info.value.problems)


def test_default_is_the_tiny_example():
    assert (REPO / "examples" / "tiny.yaml").read_text() == default_config_path().read_text()
    cfg = load_config()
    assert cfg.name == "tiny" and cfg.rollout.engine == "vllm"
    assert cfg.learner.num_workers == 2 and cfg.learner.zero_stage == 2
    assert cfg.checkpoint.every == 5


def test_dump_loads_back_unchanged(tmp_path):
    cfg = load_config(None, ["learner.optimizer.lr=3e-6", "algorithm.name=ppo", "learner.lora.target_modules=[q_proj,v_proj]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)


def test_overrides_parse_types():
    cfg = load_config(
        None,
        [
            "learner.optimizer.lr=1e-6",  # YAML 1.1 reads this as a string; the schema makes it a float
            "rollout.sampling.temperature=0.7",
            "logging.tensorboard=false",
            "reward.components.0.weight=2",
            "model.path=/models/x",
        ],
    )
    assert cfg.learner.optimizer.lr == 1e-6
    assert cfg.rollout.sampling.temperature == 0.7
    assert cfg.logging.tensorboard is False
    assert cfg.reward.components[0].weight == 2.0
    assert cfg.model.path == "/models/x"


def test_unknown_key_suggests_the_right_one():
    assert "learner.zero_stag: unknown key; did you mean 'learner.zero_stage'?" in problems("learner.zero_stag=2")
    assert "did you mean 'learner.optimizer.lr'?" in problems("learner.lr=1e-5")
    assert "did you mean 'rollout.sampling.temperature'" in problems("temperatur=1")


def test_wrong_type_and_range_name_path_value_and_allowed():
    text = problems("learner.num_workers=abc", "learner.zero_stage=5", "rollout.sampling.top_p=1.5")
    assert "learner.num_workers: got 'abc'; input should be a valid integer" in text
    assert "learner.zero_stage: got 5; input should be 0, 1, 2 or 3" in text
    assert "rollout.sampling.top_p: got 1.5; input should be less than or equal to 1" in text


def test_conflicting_batch_sizes():
    text = problems("learner.mini_batch_size=24")
    assert "learner.mini_batch_size=24 does not divide the rollout batch of 64 sequences" in text
    assert "not a multiple of learner.num_workers x learner.micro_batch_size = 2 x 8 = 16" in text
    assert "does not split evenly over learner.num_workers=3" in problems(
        "learner.num_workers=3", "learner.micro_batch_size=1", "learner.mini_batch_size=3", "rollout.prompts_per_step=5"
    )


def test_group_algorithms_need_groups_of_two():
    assert "rollout.samples_per_prompt must be >= 2 (got 1)" in problems(
        "algorithm.name=rloo", "rollout.samples_per_prompt=1", "rollout.prompts_per_step=32"
    )


def test_k1_as_loss_is_rejected_with_the_reason():
    assert "k1 as a loss has zero expected gradient" in problems("algorithm.kl.kind=k1", "algorithm.kl.mode=loss")
    load_config(None, ["algorithm.kl.kind=k1", "algorithm.kl.mode=reward"])  # fine as a penalty


def test_other_cross_field_checks():
    assert "needs algorithm.kl.target" in problems("algorithm.kl.adaptive=true")
    assert "exceeds rollout.max_model_len=40" in problems("rollout.max_model_len=40")
    assert "head_dim = hidden_size/num_heads = 32" in problems("model.tiny.hidden_size=64")
    assert "type 'python' needs path as module:function" in problems("reward.components.0.type=python")
    assert "tensor_parallel_size=2 needs placement.rollout.num_gpus=2" in problems("rollout.tensor_parallel_size=2")


def test_off_policy_fields_default_to_on_policy_and_load():
    cfg = load_config()
    assert cfg.rollout.async_steps == 0 and cfg.algorithm.is_correction == "auto"
    assert (cfg.algorithm.is_cap, cfg.algorithm.is_level) == (2.0, "token")
    assert (cfg.algorithm.dynamic_sampling, cfg.algorithm.max_sampling_rounds) == (False, 3)
    assert (cfg.algorithm.overlong, cfg.algorithm.overlong_buffer, cfg.algorithm.overlong_penalty) == ("keep", 4, 1.0)
    cfg = load_config(None, ["rollout.async_steps=2", "algorithm.is_correction=mis", "algorithm.is_level=sequence",
                             "algorithm.dynamic_sampling=true", "algorithm.overlong=penalty"])
    assert (cfg.rollout.async_steps, cfg.algorithm.is_correction, cfg.algorithm.is_level) == (2, "mis", "sequence")
    assert "algorithm.is_cap: got 1.0; input should be greater than 1" in problems("algorithm.is_cap=1.0")
    assert "rollout.async_steps: got -1; input should be greater than or equal to 0" in problems("rollout.async_steps=-1")
    assert "algorithm.max_sampling_rounds: got 0" in problems("algorithm.max_sampling_rounds=0")


def test_colocation_cannot_overlap_generation_and_training():
    colocated = ["placement.colocate=true", "placement.rollout.num_gpus=0.5", "placement.learner.num_gpus=0.5",
                 "rollout.num_workers=2"]
    text = problems(*colocated, "rollout.async_steps=1")
    assert ("rollout.async_steps=1 with placement.colocate=true: colocated engines sleep while the learners "
            "train, so generation cannot overlap training; set rollout.async_steps=0 or placement.colocate=false") in text
    assert load_config(None, colocated).rollout.async_steps == 0  # on-policy colocation is fine
    assert load_config(None, ["rollout.async_steps=1"]).rollout.async_steps == 1  # so is async without it


def test_dynamic_sampling_needs_groups():
    assert "algorithm.dynamic_sampling=true drops groups whose samples all scored the same" in problems(
        "algorithm.dynamic_sampling=true", "algorithm.name=ppo"
    )
    text = problems("algorithm.dynamic_sampling=true", "algorithm.name=reinforce_pp")
    assert "got algorithm.name=reinforce_pp, rollout.samples_per_prompt=4); use algorithm.name=grpo or rloo" in text
    for name in ("grpo", "rloo"):
        assert load_config(None, ["algorithm.dynamic_sampling=true", f"algorithm.name={name}"]).algorithm.dynamic_sampling


def test_overlong_buffer_must_leave_room_under_max_new_tokens():
    text = problems("algorithm.overlong=penalty", "algorithm.overlong_buffer=16")
    assert ("algorithm.overlong_buffer=16 must be smaller than rollout.sampling.max_new_tokens=16 with "
            "algorithm.overlong=penalty, or every response is penalised; set overlong_buffer to at most 15") in text
    assert load_config(None, ["algorithm.overlong=penalty", "algorithm.overlong_buffer=15"]).algorithm.overlong_buffer == 15
    assert load_config(None, ["algorithm.overlong=keep", "algorithm.overlong_buffer=16"])  # unused unless penalty


def test_missing_file_bad_yaml_and_bad_override(tmp_path):
    assert "does not exist" in problems(path=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  num_workers: [1\n")
    assert "is not valid YAML at line" in problems(path=bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "must hold a mapping of sections" in problems(path=listy)
    assert "is not of the form key=value" in problems("=3")


def test_binary_and_non_utf8_files_name_the_file_and_line(tmp_path):
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x8a\x00\x00\x00{\"__metadata__\"" + bytes(range(256)))
    assert f"{binary} is a binary file, not YAML text" in problems(path=binary)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("steps: 3\nname: caf\u00e9\n".encode("latin-1"))
    assert f"{latin} line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8" in problems(path=latin)
    control = tmp_path / "control.yaml"
    control.write_bytes(b"steps: 3\nname: a\x07b\n")
    assert "is not valid YAML at line 2: unacceptable character" in problems(path=control)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffsteps: 3\n".encode("utf-8"))  # Windows editors write one: fine
    assert load_config(bom).steps == 3


def test_empty_yaml_is_an_error_and_braces_mean_schema_defaults(tmp_path):
    from rlhf_dist.config import RunConfig

    for text in ("", "\n\n", "# every setting commented out\n# steps: 3\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        assert "empty.yaml is empty (no settings)" in problems(path=empty)
    braces = tmp_path / "defaults.yaml"
    braces.write_text("{}\n")
    assert load_config(braces) == RunConfig()


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("steps: 3\nlearner:\n  optimizer:\n    lr: 1.0e-5\n    eps: 1.0e-8\n    lr: 2.0e-5\n")
    assert "key 'learner.optimizer.lr' is given twice, at lines 4 and 6; keep one" in problems(path=path)
    path.write_text("steps: 3\nreward:\n  components:\n    - {type: rule, name: letters, name: format}\n")
    assert "key 'reward.components.0.name' is given twice, at lines 4 and 4" in problems(path=path)
    path.write_text("steps: 3\nname: a\nsteps: 4\n")
    assert "key 'steps' is given twice, at lines 1 and 3" in problems(path=path)
    # A merge key overriding a merged value, and an alias reused, are no duplicates.
    path.write_text("learner:\n  optimizer: &opt {lr: 1.0e-5, eps: 1.0e-8}\nx: {<<: *opt, lr: 2.0e-5}\n")
    assert "unknown key" in problems(path=path) and "given twice" not in problems(path=path)


def test_nan_and_inf_are_rejected_in_every_float_field(tmp_path):
    cases = {
        "learner.optimizer.lr=nan": "learner.optimizer.lr: got 'nan'",  # a top-level-section float
        "learner.optimizer.lr=.inf": "learner.optimizer.lr: got inf",
        "reward.clip=.nan": "reward.clip: got nan",  # Optional[float]
        "monitor.kl_budget=-.inf": "monitor.kl_budget: got -inf",
        "reward.components.0.weight=inf": "reward.components.0.weight: got 'inf'",  # in a list of sections
        "learner.optimizer.betas=[0.9, .nan]": "learner.optimizer.betas.1: got nan",  # in a tuple
        "reward.components.0.args={x: .nan}": "reward.components.0.args: got {'x': nan}",  # in a dict of unions
        "rollout.sampling.temperature=.nan": "rollout.sampling.temperature: got nan",
    }
    for override, shown in cases.items():
        text = problems(override)
        assert f"{shown}; NaN and inf are not allowed in a config, give a finite number" in text, override
        assert "valid string" not in text and "valid boolean" not in text  # one line, not one per union member
    path = tmp_path / "nan.yaml"
    path.write_text("learner:\n  optimizer:\n    lr: .NaN\n")
    assert "learner.optimizer.lr: got nan; NaN and inf" in problems(path=path)
    from rlhf_dist.config.stages import StageConfig

    with pytest.raises(ConfigError, match="beta: got inf; NaN and inf"):
        load_config(None, ["beta=.inf"], schema=StageConfig)


def test_adam_betas_must_lie_in_zero_to_one():
    assert "learner.optimizer.betas.0: got 1.0; input should be less than 1" in problems("learner.optimizer.betas=[1.0, 0.999]")
    assert "learner.optimizer.betas.1: got 1.5; input should be less than 1" in problems("learner.optimizer.betas=[0.9, 1.5]")
    assert "learner.optimizer.betas.0: got -0.1; input should be greater than or equal to 0" in problems(
        "learner.optimizer.betas=[-0.1, 0.9]"
    )
    assert load_config(None, ["learner.optimizer.betas=[0.0, 0.99]"]).learner.optimizer.betas == (0.0, 0.99)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "steps": 3, "learner": {"num_workers": 1}}))
    cfg = load_config(path, ["steps=7"])
    assert (cfg.name, cfg.steps, cfg.learner.num_workers) == ("mine", 7, 1)


def test_the_gsm8k_example_is_a_valid_rlvr_config():
    from pathlib import Path

    cfg = load_config(str(Path(__file__).parents[3] / "examples" / "gsm8k.yaml"))
    assert cfg.algorithm.name == "grpo" and cfg.data.apply_chat_template
    assert [(c.type, c.name, c.args) for c in cfg.reward.components] == [("rule", "math", {"answer_key": "answer"})]
    assert cfg.eval.every > 0 and cfg.eval.prompts.endswith("test.parquet")
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
