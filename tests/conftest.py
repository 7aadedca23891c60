"""Shared test settings and fixtures.

Settings: one torch thread per process (2 cores here), CPU DeepSpeed, quiet in-process vLLM.
Fixtures: `tiny_model`, the tiny random-init policy + reward model + tokenizer, built once per session
(read it, never write into it). Each tier's conftest marks its tests (`mark_tier`): tests/README.md.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every actor one thread whatever its plan (rlhf_dist/planning/threads.py): deterministic runs, and
# two test processes do not fight for the 2 cores.
os.environ.setdefault("RLHF_DIST_MAX_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# In-process vLLM (engine and worker in the test process): starts in seconds, not a minute.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


# The files that take minutes, heaviest first (seconds from `make test`'s --durations, 2026-12-07),
# collected first. xdist's `loadfile` still hands files out by their number of tests (its default
# --loadscope-reorder), so this order decides only among equals; with --no-loadscope-reorder the heavy
# files go first and the workers end together, but that run put the multi-turn resume test under a
# load that changed its turn batches (issue 22's note), so `make test` keeps xdist's order for now.
HEAVY_FILES = (
    "tests/e2e/test_faults.py",  # ~530 s
    "tests/e2e/test_multi_turn.py",  # ~270
    "tests/e2e/test_train.py",  # ~260
    "tests/e2e/test_demo_tools.py",  # ~210
    "tests/integration/test_stages.py",  # ~200
    "tests/e2e/test_demo_arithmetic.py",  # ~130
    "tests/integration/test_weight_sync.py",  # ~130
    "tests/e2e/test_alarms.py",  # ~125
    "tests/e2e/test_demo.py",  # ~125
    "tests/e2e/test_signals.py",  # ~120
    "tests/integration/test_multinode.py",  # ~100
)


def pytest_collection_modifyitems(config, items):
    """Heavy files first (`HEAVY_FILES`); a stable sort, so every file stays whole and in order."""
    rank = {path: i for i, path in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def mark_tier(items, tier_dir: Path, *marks) -> None:
    """Give every collected test under ``tier_dir`` the tier's markers (called by each tier's conftest)."""
    for item in items:
        if tier_dir in Path(str(item.fspath)).parents:
            for mark in marks:
                item.add_marker(mark)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`TinyPaths` (``.policy``, ``.reward``) of the default tiny model, made once for the whole session."""
    from rlhf_dist.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-session"))
