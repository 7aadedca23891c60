"""Shared by the multi-turn tests of this folder."""

import copy

import pytest

from rlhf_dist.models.tiny import train_tokenizer


@pytest.fixture(scope="module")
def qwen_tokenizer():
    """The tiny tokenizer with Qwen's two turn tokens as special tokens."""
    tok = copy.deepcopy(train_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok
