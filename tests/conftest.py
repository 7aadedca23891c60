"""Shared test settings: one torch thread per process (2 cores here), CPU DeepSpeed, quiet vLLM."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# In-process vLLM (engine and worker in the test process): starts in seconds, not a minute.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
