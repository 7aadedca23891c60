"""Tiny random-init models and a locally trained tokenizer, so that runs and tests need no hub.

`make_tiny(out_dir)` writes two Hugging Face model directories, each with its tokenizer:

- ``out_dir/policy``: a causal LM (Llama or Qwen2 architecture),
- ``out_dir/reward``: a scalar reward model (``AutoModelForSequenceClassification``, num_labels=1).

Both load with ``from_pretrained`` and in vLLM; head_dim is 64 because vLLM's CPU attention
rejects small head dims.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_dist.config.schema import TinyModelConfig

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

# Words of the synthetic corpus the tokenizer is trained on; covers the builtin toy tasks.
_WORDS = (
    "the a an of to and in is it that for on with as was at by be this are or from not have "
    "write say letter letters word words number numbers count list repeat answer question please "
    "cat dog bird fish tree sun moon star red blue green yellow big small fast slow happy sad "
    "apple banana cherry grape lemon mango orange peach pear plum one two three four five six "
    "seven eight nine ten good bad yes no more less many few all some every none abc aaa bbb"
).split()


# The tiny tokenizer's chat template: role tags in plain text (the byte-level BPE encodes any text),
# the template writes BOS, and eos closes every turn, so a model trained on chats learns to stop
# where an assistant turn ends. The generation prompt is the assistant's tag.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelPaths:
    policy: Path
    reward: Path


def synthetic_corpus(num_lines: int = 3000, seed: int = 0) -> list[str]:
    """Deterministic English-like lines with letters and digits, for tokenizer training."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 999)))
        if rng.random() < 0.3:
            words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 6))))
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ""]))
    return lines


def train_tokenizer(vocab_size: int = 512, seed: int = 0):
    """A byte-level BPE tokenizer trained on :func:`synthetic_corpus`; any text encodes.

    Returns a ``PreTrainedTokenizerFast`` with pad, bos and eos tokens and :data:`CHAT_TEMPLATE`;
    encoding prepends bos.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(seed=seed), trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model_config(spec: TinyModelConfig, tokenizer, num_labels: int | None = None):
    """A transformers config of the requested architecture, sized by ``spec``."""
    from transformers import LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.arch]
    extra = {} if num_labels is None else {"num_labels": num_labels}
    return config_cls(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def make_tiny(
    out_dir: str | Path, spec: TinyModelConfig | None = None, seed: int = 0
) -> TinyModelPaths:
    """Write a random-init policy and reward model, each with the same local tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = spec or TinyModelConfig()
    out = Path(out_dir)
    paths = TinyModelPaths(policy=out / "policy", reward=out / "reward")
    tokenizer = train_tokenizer(spec.vocab_size, seed=seed)
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(tiny_model_config(spec, tokenizer)).float()
    torch.manual_seed(seed + 1)
    reward = AutoModelForSequenceClassification.from_config(
        tiny_model_config(spec, tokenizer, num_labels=1)
    ).float()
    for model, path in ((policy, paths.policy), (reward, paths.reward)):
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    return paths
