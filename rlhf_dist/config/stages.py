"""Configs of the supervised stages: `rlhf-dist sft`, `rlhf-dist rm` and `rlhf-dist dpo`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_dist.config.placement import RoleResources
from rlhf_dist.config.schema import (
    MetricSinksConfig,
    ModelConfig,
    OptimizerConfig,
    Section,
    TrainerConfig,
)
from rlhf_dist.config.validate import offload_problems


class StageDataConfig(Section):
    """Training rows: JSONL, Parquet, or a `datasets` directory saved with save_to_disk."""

    path: str | None = Field(None, description="file or directory; required except in `rlhf-dist demo`")
    format: Literal["auto", "jsonl", "parquet", "datasets"] = Field(
        "auto", description="auto: a directory is `datasets`, *.parquet Parquet, *.jsonl (or .json) JSONL"
    )
    split: str = Field("train", description="the split to read when data.path is a saved DatasetDict")
    max_length: int = Field(128, ge=8, description="tokens of prompt + response")
    overlong: Literal["truncate", "skip"] = Field(
        "truncate",
        description="rows past max_length: cut the response (a prompt that alone fills it keeps its end), or skip",
    )
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of rows held out for evaluation")
    prompt_key: str = Field("prompt", description="column holding the prompt text")
    response_key: str = Field("response", description="sft: column holding the response text")
    messages_key: str = Field(
        "messages",
        description="column holding a chat, a list of {role, content}; sft: the last (assistant) message is the "
        "response; rm/dpo: the prompt. Used when a row has it",
    )
    chosen_key: str = Field("chosen", description="rm/dpo: column holding the preferred response")
    rejected_key: str = Field("rejected", description="rm/dpo: column holding the other response")
    apply_chat_template: bool = Field(
        False, description="wrap text prompt and response as a user and an assistant message of a chat"
    )
    chat_template: str | None = Field(
        None, description="a Jinja chat template used instead of the tokenizer's own; null = the tokenizer's"
    )
    system_prompt: str | None = Field(
        None, description="a system message put before every chat that does not start with one"
    )


class StageLearnerConfig(TrainerConfig):
    """A stage's DeepSpeed world (rlhf_dist/stages/trainer.py): the shared learner fields, none of the RL-only ones
    (a stage has no critic, and its passes over the data are the top-level ``epochs``)."""

    mini_batch_size: int = Field(16, ge=1, description="examples (pairs for rm/dpo) per optimizer step, all ranks")
    micro_batch_size: int = Field(8, ge=1, description="examples (pairs for rm/dpo) per forward pass, per rank")
    optimizer: OptimizerConfig = Field(OptimizerConfig(lr=1e-3), description="AdamW and its learning-rate schedule")


class StagePlacementConfig(Section):
    """Where a stage's ranks run: one bundle per rank, planned like the RL learners' (rlhf_dist/planning/placement.py
    `plan_world`) and started by the same launcher (launch/roles.py `start_world`)."""

    learner: RoleResources = Field(RoleResources(), description="per rank of the stage's DeepSpeed world")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the ranks' bundles (STRICT_SPREAD: one rank per node)"
    )


class StageConfig(Section):
    """One supervised stage: `rlhf-dist sft`, `rm` or `dpo` (launch/stages.py, rlhf_dist/stages/trainer.py)."""

    name: str | None = Field(
        None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description="names the default run dir, runs/<name>-<timestamp>; null = the stage's kind (sft, rm, dpo)",
    )
    seed: int = Field(0, ge=0, description="seeds the held-out split, the shuffling, the tiny model and the trainers")
    epochs: int = Field(2, ge=1, description="passes over the training rows")
    model: ModelConfig = Field(ModelConfig(), description="the model to train; rm puts a score head on it")
    data: StageDataConfig = Field(StageDataConfig(), description="the training rows")
    learner: StageLearnerConfig = Field(StageLearnerConfig(), description="the DeepSpeed trainers")
    placement: StagePlacementConfig = Field(StagePlacementConfig(), description="resources per rank and where the ranks go")
    beta: float = Field(0.1, gt=0.0, description="dpo: inverse temperature of the implicit reward")
    logging: MetricSinksConfig = Field(MetricSinksConfig(), description="metric sinks besides RUN_DIR/metrics.jsonl")


def validate_stage_config(cfg: StageConfig) -> list[str]:
    learner = cfg.learner
    if offload_problems(learner):
        return offload_problems(learner)
    per_step = learner.num_workers * learner.micro_batch_size
    if learner.mini_batch_size % per_step:
        return [
            f"learner.mini_batch_size={learner.mini_batch_size} is not a multiple of learner.num_workers x "
            f"learner.micro_batch_size = {per_step}; every rank needs whole micro-batches"
        ]
    return []
