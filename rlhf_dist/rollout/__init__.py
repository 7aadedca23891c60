"""Rollout engines (vLLM, transformers) and what they are asked and answer (requests.py)."""
