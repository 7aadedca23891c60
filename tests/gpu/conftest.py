"""The GPU tier: every test here is marked ``gpu`` and skipped, with the reason, where no CUDA device
is visible. It needs torch with CUDA, and Ray and DeepSpeed for the tests that start actors (the lent
GPU machine gets them from the wheelhouse that gpu/make-wheelhouse.sh builds); the rollout engine
is ``hf`` (no vLLM build reaches that machine: STACK-NOTES)."""

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
HAS_CUDA = torch.cuda.is_available()

if HAS_CUDA:
    # tests/conftest.py points DeepSpeed at its CPU accelerator for the CPU tiers; here it must find CUDA
    # (the actors decide for themselves too: actors/shell.py `use_assigned_devices`).
    os.environ.pop("DS_ACCELERATOR", None)
    # DeepSpeed's JIT builds read the arch list; the H100's "9.0a" breaks its parser (STACK-NOTES).
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="no CUDA device visible (torch.cuda.is_available() is False): the GPU tier needs one")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            if not HAS_CUDA:
                item.add_marker(skip)
