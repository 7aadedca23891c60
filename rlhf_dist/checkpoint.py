"""Writing model directories: atomically (temp dir, fsync, rename) so a crash never leaves half a model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def write_hf_model(
    out_dir: Path, module: torch.nn.Module, state: dict[str, torch.Tensor], tokenizer_path: str, task: str = "causal"
) -> Path:
    """Save ``state`` (Hugging Face names, merged if LoRA) as a model directory at ``out_dir``.

    The model is rebuilt from the base config and loaded strictly, so a missing or extra tensor
    fails here rather than in whoever loads the directory later.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_dist.models import load_tokenizer

    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    model_cls = AutoModelForSequenceClassification if task == "rm" else AutoModelForCausalLM
    model = model_cls.from_config(base.config)
    model.load_state_dict(state, strict=True)
    model = model.to(next(iter(state.values())).dtype)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    load_tokenizer(tokenizer_path).save_pretrained(tmp)
    _fsync_tree(tmp)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
