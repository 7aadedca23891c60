"""`rlhf-dist make-tiny DIR`: a tiny random-init policy, reward model and tokenizer (no download)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from rlhf_dist.config import TinyModelConfig
from rlhf_dist.errors import UserError


def add_make_tiny_parser(commands: argparse._SubParsersAction) -> None:
    tiny = commands.add_parser(
        "make-tiny", help="write a tiny random-init policy, reward model and tokenizer (no download)"
    )
    tiny.add_argument("dir", help="output directory (new or empty); gets policy/, reward/ and tiny.json")
    tiny.add_argument("--force", action="store_true", help="replace DIR even if it is not empty (built beside it, then swapped in: never half a model)")
    tiny.add_argument("--arch", choices=["llama", "qwen2"], default="llama", help="model architecture (default: llama)")
    tiny.add_argument("--vocab-size", type=int, default=512, help="tokenizer and embedding size (default: 512)")
    tiny.add_argument("--hidden-size", type=int, default=128, help="64 x heads (head_dim 64 for vLLM)")
    tiny.add_argument("--layers", type=int, default=2, help="decoder layers (default: 2)")
    tiny.add_argument("--heads", type=int, default=2, help="attention heads (default: 2)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    tiny.set_defaults(handler=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:


    # imported here, not at the top: it loads torch and transformers; `--help` must not wait for them
    from rlhf_dist.models.tiny import make_tiny

    try:
        spec = TinyModelConfig(
            arch=args.arch,
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            num_heads=args.heads,
        )
    except ValidationError as exc:
        raise UserError(f"bad tiny-model size: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    if spec.hidden_size % spec.num_heads:
        raise UserError(f"--hidden-size {spec.hidden_size} is not divisible by --heads {spec.num_heads}")
    out = Path(args.dir)
    if not args.force and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"make-tiny: {out} already exists and is not empty; nothing was changed. Give a new or "
                        "empty directory, or add --force to replace it")
    paths = make_tiny(out, spec, seed=args.seed, replace=args.force)
    print(f"policy model: {paths.policy}\nreward model: {paths.reward}")
    return 0
