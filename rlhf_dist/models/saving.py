"""Writing a Hugging Face model directory atomically (temp dir, fsync, rename), never pickled."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from rlhf_dist.checkpoints.files import publish_dir
from rlhf_dist.models.loading import load_tokenizer


def write_hf_model(
    out_dir: Path, module: torch.nn.Module, state: dict[str, torch.Tensor], tokenizer_path: str, task: str = "causal",
    chat_template: str | None = None,
) -> Path:
    """Save ``state`` (Hugging Face names, merged if LoRA) as a model directory at ``out_dir``, with
    the tokenizer of ``tokenizer_path``; ``chat_template`` (the run's ``data.chat_template``) becomes
    the saved tokenizer's template, so the next stage renders chats as this one did.

    The model is rebuilt from the base config and loaded strictly, so a missing or extra tensor
    fails here rather than in whoever loads the directory later.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification


    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    model_cls = AutoModelForSequenceClassification if task == "rm" else AutoModelForCausalLM
    model = model_cls.from_config(base.config)
    model.load_state_dict(state, strict=True)
    model = model.to(next(iter(state.values())).dtype)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer = load_tokenizer(tokenizer_path)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, out_dir)
    return out_dir
