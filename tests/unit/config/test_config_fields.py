"""Honest config: every field has a description and a reader, stages carry no RL-only field, and
`rlhf-dist config show --defaults` prints the defaults with their descriptions, loadable as they are."""

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from rlhf_dist.config import ConfigError, RunConfig, dump_defaults, load_config
from rlhf_dist.config.stages import StageConfig

REPO = Path(__file__).resolve().parents[3]
SCHEMAS = [RunConfig, StageConfig]


def sections(annotation) -> list[type[BaseModel]]:
    """Every model class inside an annotation: ``X``, ``list[X]``, ``str | X | None`` ..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in sections(arg)]


def all_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, FieldInfo) of every field of ``model`` and of every section below it."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, info
        for sub in sections(info.annotation):
            yield from all_fields(sub, f"{path}.")


def undescribed(model: type[BaseModel]) -> list[str]:
    return [path for path, info in all_fields(model) if not (info.description or "").strip()]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_field_has_a_description(schema):
    assert undescribed(schema) == []


def test_the_description_check_sees_nested_sections_and_catches_a_gap():
    paths = {path for path, _ in all_fields(RunConfig)}
    # nested sections, a list of sections and a union member are all walked
    assert {"learner.optimizer.critic_lr", "reward.components.weight", "reward.gold.args",
            "logging.wandb.mode", "model.tiny.arch"} <= paths

    class Inner(BaseModel):
        documented: int = Field(1, description="has one")
        bare: int = 2

    class Outer(BaseModel):
        inner: list[Inner] = Field(default_factory=list, description="a list of sections")
        other: str | Inner | None = None

    assert undescribed(Outer) == ["inner.bare", "other", "other.bare"]


def test_stage_configs_carry_no_rl_only_field():
    learner = StageConfig.model_fields["learner"].annotation
    assert not {"epochs", "critic_init"} & set(learner.model_fields)
    assert "critic_lr" not in learner.model_fields["optimizer"].annotation.model_fields
    assert not {"progress_bar", "samples_every"} & set(StageConfig.model_fields["logging"].annotation.model_fields)
    for key in ("learner.critic_init=policy", "learner.epochs=3", "learner.optimizer.critic_lr=1e-4",
                "logging.progress_bar=false", "logging.samples_every=1"):
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(None, [key], schema=StageConfig)
    # what the stages do read is still there
    cfg = load_config(None, ["epochs=3", "learner.zero_stage=3", "learner.optimizer.warmup_steps=2",
                             "learner.lora.enabled=true", "logging.wandb.mode=offline"], schema=StageConfig)
    assert cfg.epochs == 3 and cfg.learner.optimizer.lr == 1e-3 and cfg.learner.mini_batch_size == 16


def test_a_partial_section_keeps_the_defaults_its_parent_gives_it():
    # placement.reward defaults to num_cpus=0.25, a stage's optimizer to lr=1e-3 (not the classes' 0.5, 1e-5)
    cfg = load_config(None, ["placement.reward.num_gpus=1"])
    assert (cfg.placement.reward.num_gpus, cfg.placement.reward.num_cpus) == (1.0, 0.25)
    stage = load_config(None, ["learner.optimizer.warmup_steps=2"], schema=StageConfig)
    assert (stage.learner.optimizer.lr, stage.learner.optimizer.warmup_steps) == (1e-3, 2)
    assert load_config(None, ["placement.reward.num_cpus=2"]).placement.reward.num_cpus == 2.0


def test_removed_fields_are_unknown_keys():
    with pytest.raises(ConfigError, match="logging.log_every: unknown key"):
        load_config(None, ["logging.log_every=1"])


def leaf_names(schema: type[BaseModel]) -> set[str]:
    return {path.rsplit(".", 1)[-1] for path, info in all_fields(schema) if not sections(info.annotation)}


def test_every_field_name_is_read_outside_the_config_package():
    """A coarse check, by name: some code outside rlhf_dist/config reads an attribute of each
    field's name. It catches a field nothing reads (as `logging.log_every` was), not one read by
    the wrong code, nor a stage field that only the RL side reads."""
    sources = [p for d in ("rlhf_dist", "launch", "actors") for p in (REPO / d).rglob("*.py")
               if "config" not in p.relative_to(REPO).parts[1:-1]]
    code = "\n".join(p.read_text() for p in sources)
    unread = sorted(name for name in leaf_names(RunConfig) | leaf_names(StageConfig)
                    if not re.search(rf"\.{name}\b", code))
    assert unread == []


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_defaults_load_back_unchanged(tmp_path, schema):
    path = tmp_path / "defaults.yaml"
    path.write_text(dump_defaults(schema))
    assert load_config(path, schema=schema) == schema()


def printed_fields(model: type[BaseModel], prefix: str = ""):
    """The fields --defaults prints on lines of their own: all but those inside an inline value
    (a list of sections, or a union whose default is null)."""
    for name, info in model.model_fields.items():
        yield f"{prefix}{name}", info
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            yield from printed_fields(type(default), f"{prefix}{name}.")


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_defaults_put_each_description_above_its_field(schema):
    expected = dict(printed_fields(schema))
    keys: list[str] = []  # the path of the current line, by indentation
    comments: list[str] = []
    printed = []
    for line in dump_defaults(schema).splitlines():
        text = line.strip()
        if text.startswith("#"):
            comments.append(text[1:].strip())
        elif text:
            depth = (len(line) - len(line.lstrip())) // 2
            keys = [*keys[:depth], text.split(":", 1)[0]]
            path = ".".join(keys)
            description = " ".join(expected[path].description.split())
            assert description in " ".join(comments), f"{path}: {description!r} not in the comment above it"
            printed.append(path)
            comments = []
    assert printed == list(expected)


def test_defaults_comments_name_the_choices():
    text = dump_defaults()
    assert "(ppo|grpo|rloo|reinforce_pp)\n  name: grpo" in text
    assert "peak learning rate of the trained model" in text and "    lr: 1.0e-05" in text


def test_config_show_defaults_from_the_command_line(tmp_path):
    run = [sys.executable, "-m", "launch", "config", "show", "--defaults"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout == dump_defaults()
    path = tmp_path / "shown.yaml"
    path.write_text(out.stdout)
    assert load_config(path) == RunConfig()
    out = subprocess.run([*run, "steps=3"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "--defaults prints the schema's defaults alone" in out.stderr
