"""Data: one reader for every data file, chat rendering, RL prompts and the prompt sampler.

- :mod:`rlhf_dist.data.reader`: JSONL, Parquet and saved `datasets` directories into a ``Table``;
- :mod:`rlhf_dist.data.chat`: a row's prompt (text or chat) and chat-template rendering;
- :mod:`rlhf_dist.data.prompts`: builtin tasks and ``load_prompts`` for the RL loop (and eval);
- :mod:`rlhf_dist.data.sampler`: the resumable ``PromptSampler``.

The supervised stages build their examples from the same reader and renderer (``stage_data``).
"""

from rlhf_dist.data.chat import ChatRenderer, Messages, as_messages, row_prompt
from rlhf_dist.data.prompts import BUILTIN_PREFIX, Prompt, PromptSet, builtin_prompts, load_prompts
from rlhf_dist.data.reader import FORMATS, DataError, Table, read_table
from rlhf_dist.data.sampler import PromptSampler

__all__ = [
    "BUILTIN_PREFIX",
    "FORMATS",
    "ChatRenderer",
    "DataError",
    "Messages",
    "Prompt",
    "PromptSampler",
    "PromptSet",
    "Table",
    "as_messages",
    "builtin_prompts",
    "load_prompts",
    "read_table",
    "row_prompt",
]
