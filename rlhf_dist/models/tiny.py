"""Tiny random-init models and a locally trained tokenizer, so that runs and tests need no hub.

`make_tiny(out_dir)` writes two Hugging Face model directories, each with its tokenizer:

- ``out_dir/policy``: a causal LM (Llama or Qwen2 architecture),
- ``out_dir/reward``: a scalar reward model (``AutoModelForSequenceClassification``, num_labels=1),
- ``out_dir/tiny.json``: the spec and seed they were made from.

Both load with ``from_pretrained`` and in vLLM; head_dim is 64 because vLLM's CPU attention
rejects small head dims.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_dist.checkpoints.files import publish_dir
from rlhf_dist.config.schema import TinyModelConfig
from rlhf_dist.data.prompts import WORDS
from rlhf_dist.errors import UserError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPEC_FILE = "tiny.json"  # the spec and seed a tiny model was made from, to tell a stale one apart

# Words of the synthetic corpus the tokenizer is trained on; covers the builtin toy tasks.


# The tiny tokenizer's chat template: role tags in plain text (the byte-level BPE encodes any text),
# the template writes BOS, and eos closes every turn, so a model trained on chats learns to stop
# where an assistant turn ends. The generation prompt is the assistant's tag. With `tools=` (multi-turn
# runs), a system turn first names each tool and its parameters and shows the hermes call format; tool
# results are turns of the role `tool`, as any other role.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>\ntools:{% for t in tools %} {{ t['function']['name'] }}("
    "{{ t['function']['parameters']['properties'] | join(', ') }}){% endfor %}. call: <tool_call>"
    '{"name": ..., "arguments": {...}}</tool_call>{{ eos_token }}{% endif %}'
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
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
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 999)))
        if rng.random() < 0.3:
            words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 6))))
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ""]))
    return lines


def train_tokenizer(vocab_size: int = 512, seed: int = 0, extra_corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained on :func:`synthetic_corpus` (and ``extra_corpus``, lines of a
    task's own text, such as tool calls, so that it gets tokens of its own); any text encodes.

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
    tokenizer.train_from_iterator(synthetic_corpus(seed=seed) + list(extra_corpus or []), trainer)
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
    out_dir: str | Path, spec: TinyModelConfig | None = None, seed: int = 0, replace: bool = False,
    extra_corpus: list[str] | None = None,
) -> TinyModelPaths:
    """Write a random-init policy and reward model, each with the same local tokenizer, and
    ``tiny.json`` (the spec and seed they were made from).

    Everything is built in a temporary sibling and renamed into place, so ``out_dir`` is never
    half a model. An existing non-empty ``out_dir`` is replaced only when it is an earlier tiny
    model, or with ``replace``; anything else is refused untouched. ``extra_corpus``: lines of a task's
    own text for the tokenizer's training (a demo's tool calls).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification


    spec = spec or TinyModelConfig()
    out = Path(out_dir)
    if out.exists() and not replace and not _is_tiny_dir(out) and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} is not empty and is not a tiny model; pick a new or empty directory")
    paths = TinyModelPaths(policy=out / "policy", reward=out / "reward")
    tokenizer = train_tokenizer(spec.vocab_size, seed=seed, extra_corpus=extra_corpus)
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(tiny_model_config(spec, tokenizer)).float()
    torch.manual_seed(seed + 1)
    reward = AutoModelForSequenceClassification.from_config(
        tiny_model_config(spec, tokenizer, num_labels=1)
    ).float()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for model, name in ((policy, "policy"), (reward, "reward")):
            model.save_pretrained(tmp / name, safe_serialization=True)
            tokenizer.save_pretrained(tmp / name)
        (tmp / SPEC_FILE).write_text(json.dumps({"spec": spec.model_dump(), "seed": seed}, indent=1))
        if out.exists() and not out.is_dir():
            out.unlink()  # only reached with replace
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _is_tiny_dir(path: Path) -> bool:
    """An earlier `make_tiny` output: its spec file, or (older ones) just policy/ and reward/."""
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return SPEC_FILE in names or (names == {"policy", "reward"} and (path / "policy" / "config.json").is_file())


def tiny_mismatch(out_dir: Path, spec: TinyModelConfig, seed: int) -> str | None:
    """How the tiny model in ``out_dir`` differs from ``spec`` and ``seed`` (None: it matches).

    Reads ``tiny.json``; for tiny models written before it existed, compares the shape in
    ``policy/config.json`` (the seed cannot be checked there).
    """
    out = Path(out_dir)
    try:
        made = json.loads((out / SPEC_FILE).read_text())
        have = {**made["spec"], "seed": made["seed"]}
        want = {**spec.model_dump(), "seed": seed}
    except FileNotFoundError:
        config = json.loads((out / "policy" / "config.json").read_text())
        have = {"arch": config.get("model_type"), "hidden_size": config.get("hidden_size"),
                "num_layers": config.get("num_hidden_layers"), "num_heads": config.get("num_attention_heads"),
                "intermediate_size": config.get("intermediate_size"),
                "max_position_embeddings": config.get("max_position_embeddings")}
        want = {k: getattr(spec, k) for k in have}
    except (ValueError, KeyError, TypeError) as exc:
        return f"its {SPEC_FILE} is unreadable ({exc})"
    diffs = [f"{k} {have.get(k)!r} (config: {v!r})" for k, v in want.items() if have.get(k) != v]
    return ", ".join(diffs) or None
