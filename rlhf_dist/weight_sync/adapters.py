"""LoRA adapters in weight sync: what a sync carries, and how each engine takes it in.

With ``learner.lora.enabled`` the learner sends only the adapter tensors, under peft's saved names
(``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), with an `AdapterSpec`; the
generators already hold the base weights, which never change. vLLM loads an adapter from a
directory in peft's format: `AdapterVersions` gives each version a directory and a LoRA id of its
own, and the engine evicts the previous one (a new id per version, so no cache serves stale
weights). The hf engine wraps its model with peft once and loads each version into it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# vLLM sizes its LoRA slots by ``max_lora_rank``, which must be one of these (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class AdapterSpec:
    """The peft LoRA config the synced tensors belong to (the learner's)."""

    r: int
    alpha: float
    target_modules: tuple[str, ...]  # module names or name suffixes, as peft matches them

    def adapter_config(self) -> dict:
        """adapter_config.json as peft's ``save_pretrained`` writes it (the fields vLLM reads)."""
        return {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.r, "lora_alpha": self.alpha,
            "target_modules": list(self.target_modules), "lora_dropout": 0.0, "bias": "none",
            "use_rslora": False, "use_dora": False, "modules_to_save": None, "fan_in_fan_out": False,
        }

    def lora_config(self):
        """The same config as a peft ``LoraConfig`` (dropout 0: generation is inference)."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.target_modules), task_type="CAUSAL_LM")


def vllm_max_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds adapters of rank ``r``."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(
        f"learner.lora.r={r} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]}); "
        "lower learner.lora.r or use rollout.engine=hf"
    )


def write_adapter(directory: str | Path, spec: AdapterSpec, named: list[tuple[str, torch.Tensor]]) -> Path:
    """Write ``named`` adapter tensors and ``spec`` as a peft adapter directory
    (adapter_config.json + adapter_model.safetensors), the form vLLM's ``LoRARequest`` loads."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({name: t.detach().to("cpu").contiguous() for name, t in named}, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(spec.adapter_config(), indent=1))
    return out


class AdapterVersions:
    """A LoRA id and an adapter directory for every adapter an engine receives.

    Ids start at 1 and only grow (vLLM keys its caches by id); directories live under ``root``, a
    fresh temporary directory on the generator's node by default (the tensors arrive over the sync
    group, so no storage needs to be shared).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="rlhf-dist-lora-"))
        self.last_id = 0

    def next(self) -> tuple[int, Path]:
        """The id and directory of the next version."""
        self.last_id += 1
        return self.last_id, self.root / f"v{self.last_id:06d}"

    def drop(self, directory: str | Path) -> None:
        """Delete an evicted version's directory."""
        shutil.rmtree(directory, ignore_errors=True)


def load_into_peft(model, named: list[tuple[str, torch.Tensor]]) -> None:
    """Copy adapter tensors (peft saved names) into ``model``, a peft model; every tensor must land."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, dict(named))
    held = sum(1 for name, _ in model.named_parameters() if ".lora_A." in name or ".lora_B." in name)
    if result.unexpected_keys or held != len(named):
        raise KeyError(
            f"the generator's peft model holds {held} adapter tensors, {len(named)} arrived "
            f"(unknown: {result.unexpected_keys[:4]}); learner and generator built different adapters"
        )
